"""Where computations run: the torch device, checked before any work, and the number of CPU threads.

Threads: torch uses one thread per physical core by default. The toy world's models are so small that a
second thread gains little (8 toy images: 3.3 s on one thread, 2.7 s on two, on an idle 2-core machine) and
loses a great deal when another process holds a core (3.0 s on one thread, over 120 s on two, as every
parallel region waits for the descheduled thread). Annotation's data-loader workers need cores of their own
(2,000 toy images with 2 workers: 9.4 s on one thread, 15.7 s on two). Hence ``--threads auto``: one thread on
the toy world, otherwise the cores left after the data-loader workers.
"""

from __future__ import annotations

import argparse

AUTO = "auto"
_DEFAULT_THREADS: int | None = None  # torch's own thread count, read before the first change
THREADS_HELP = (
    "CPU threads for torch: a number, or 'auto' (default): 1 on the embedded toy world (its tiny models "
    "run fastest on one thread and stall when cores are shared), otherwise torch's default (one per "
    "core) less the data-loader workers"
)


def threads_setting(text: str) -> int | str:
    """argparse type of ``--threads``: ``auto`` or an integer >= 1."""
    if text.strip().lower() == AUTO:
        return AUTO
    from .validation import positive_int

    return positive_int(text)


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N|auto`` to a command."""
    parser.add_argument("--threads", type=threads_setting, default=AUTO, metavar="N", help=THREADS_HELP)


def apply_threads(setting: int | str, *, toy: bool = False, workers: int = 0) -> int:
    """Set torch's CPU threads as ``--threads`` says (see the module docstring); returns the number set."""
    import torch

    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()
    if setting == AUTO:
        count = 1 if toy else max(1, _DEFAULT_THREADS - workers)
    else:
        count = int(setting)
    torch.set_num_threads(count)
    return count


def resolve_device(name: str | None) -> str:
    """The device to run on: ``name`` checked to exist here, or cuda when available, else cpu."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device: use cpu, cuda, cuda:1, mps, ...") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {name}: CUDA is not available here ({build}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1})"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: Apple's MPS backend is not available here; use --device cpu")
    return name


def hide_loading_bars() -> None:
    """Hide diffusers' and transformers' model-loading progress bars (for ``--no-progress``)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
