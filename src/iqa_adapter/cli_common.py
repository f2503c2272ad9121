"""Pieces shared by the command groups: sampling defaults, the model options of generate and evaluate, and
small parsers (kept apart from :mod:`iqa_adapter.cli` so that command groups beside their code import down)."""

from __future__ import annotations

import argparse
import json

from .runtime import add_threads_option
from .toy.world import ADAPTER_NAMES as TOY_ADAPTER_NAMES
from .toy.world import GUIDANCE_SCALE as TOY_GUIDANCE
from .toy.world import SAMPLING_STEPS as TOY_STEPS
from .validation import non_negative_number, positive_int, seed

DEFAULT_STEPS = 35
DEFAULT_GUIDANCE = 7.5
TOY_ADAPTER_PREFIX = "toy:"  # --adapter toy:<name>: one of the toy world's own adapters


def torch_dtype(name: str | None, device: str):
    """The torch dtype of a ``--dtype`` name; by default float16 on CUDA, float32 elsewhere."""
    import torch

    if name is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    dtypes = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if name not in dtypes:
        raise ValueError(f"--dtype must be one of {', '.join(dtypes)}, got {name!r}")
    return dtypes[name]


def plural(count: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def resolve_model_and_sampling(args, reference: bool = False) -> bool:
    """Fill in the base model, adapter and sampling settings a call leaves out; returns whether the embedded toy
    world is used. Without --base, the embedded toy world gives its base model, its sampling settings and, unless
    --adapter (or --no-adapter) is given, its score adapter (its reference adapter when ``reference``); an
    ``--adapter toy:<name>`` is one of the world's own adapters
    (:meth:`~iqa_adapter.toy.world.ToyWorld.named_adapter`), which --base refuses: they fit only the toy base."""
    if args.base is not None:
        refuse_toy_adapters(args.adapter if isinstance(args.adapter, list) else [args.adapter])
        args.steps = DEFAULT_STEPS if args.steps is None else args.steps
        args.guidance = DEFAULT_GUIDANCE if args.guidance is None else args.guidance
        return False
    from .toy.world import shipped_world

    world = shipped_world().check()
    args.base = str(world.base)
    args.steps = TOY_STEPS if args.steps is None else args.steps
    args.guidance = TOY_GUIDANCE if args.guidance is None else args.guidance
    if not args.adapter and not getattr(args, "no_adapter", False):
        args.adapter = str(world.reference_adapter if reference else world.adapter)
    elif isinstance(args.adapter, list):
        args.adapter = [resolve_toy_adapter(world, location) for location in args.adapter]
    elif args.adapter:
        args.adapter = resolve_toy_adapter(world, args.adapter)
    print(f"using the embedded toy world ({world.root}); give --base and --adapter for your own models")
    return True


def _toy_adapter_name(location: str) -> tuple[str, str] | None:
    """``toy:<name>`` -> ``("", name)``, ``NAME=toy:<name>`` -> ``("NAME=", name)``; None for any other location."""
    label, marker, name = location.rpartition(TOY_ADAPTER_PREFIX)
    if not marker or (label and not label.endswith("=")):
        return None
    return label, name


def resolve_toy_adapter(world, location: str) -> str:
    """``toy:<name>`` (or ``NAME=toy:<name>``) -> the folder of the toy world's adapter ``name``; else unchanged."""
    named = _toy_adapter_name(location)
    if named is None:
        return location
    label, name = named
    return label + str(world.named_adapter(name))


def refuse_toy_adapters(locations: list[str | None]) -> None:
    """A clear error for a ``toy:<name>`` adapter beside another base model (it fits only the toy world's)."""
    toy_locations = [location for location in locations if location and _toy_adapter_name(location)]
    if toy_locations:
        raise ValueError(
            f"--adapter {toy_locations[0]} is one of the embedded toy world's adapters, which fit only the toy "
            "world's base model; leave out --base to use it, or give an adapter folder or hub id for your --base"
        )


def add_adapter_location_options(parser: argparse.ArgumentParser) -> None:
    """``--revision`` and ``--subfolder``: where in a hub repository the ``--adapter`` files lie."""
    parser.add_argument(
        "--revision", default=None, help="branch, tag or commit of an --adapter given as a hub id (default: main)"
    )
    parser.add_argument(
        "--subfolder", default=None, help="folder of the adapter's files inside the --adapter folder or hub repository"
    )


def load_adapter(location: str, args: argparse.Namespace):
    """The :class:`~iqa_adapter.IQAAdapter` at ``location`` (a folder or a hub id), with the call's ``--revision``
    (for hub ids) and ``--subfolder``."""
    from .adapter import IQAAdapter
    from .hub import is_local

    revision = None if is_local(location) else getattr(args, "revision", None)
    return IQAAdapter.from_pretrained(location, revision=revision, subfolder=getattr(args, "subfolder", None))


def metric_options(items: list[str]) -> dict[str, dict]:
    """``--metric-option niqe.params=FILE`` -> ``{"niqe": {"params": "FILE"}}`` (values stay strings unless numeric)."""
    options: dict[str, dict] = {}
    for item in items:
        target, separator, value = item.partition("=")
        metric, dot, option = target.rpartition(".")
        if not separator or not dot or not metric or not option:
            raise ValueError(
                f"--metric-option takes METRIC.OPTION=VALUE (e.g. niqe.params=niqe.safetensors), got {item!r}"
            )
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.setdefault(metric, {})[option] = parsed if isinstance(parsed, (int, float, bool)) else value
    return options


def comma_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def add_generation_options(parser: argparse.ArgumentParser, adapters: str = "one") -> None:
    """Options that generate, evaluate and pairs share: the model, sampling and where it runs. ``adapters``: "one"
    ``--adapter``; "several", a repeatable ``--adapter`` (all condition together); "named", a repeatable
    ``--adapter [NAME=]FOLDER`` (each evaluated on its own)."""
    parser.add_argument(
        "--base",
        default=None,
        help="diffusers model directory or hub id (SD 1.x/2.x, SDXL); default: the embedded toy world",
    )
    location = "adapter folder (config.json + adapter.safetensors) or hub id (org/name)"
    default = (
        f"default without --base: the toy world's main adapter; {TOY_ADAPTER_PREFIX}NAME one of its own "
        f"({', '.join(TOY_ADAPTER_NAMES)})"
    )
    if adapters == "named":
        parser.add_argument(
            "--adapter",
            action="append",
            default=[],
            metavar="[NAME=]FOLDER_OR_HUB_ID",
            help=f"an adapter to evaluate, repeatable (several share the base model's images); {default}",
        )
    elif adapters == "several":
        parser.add_argument(
            "--adapter",
            action="append",
            default=None,
            metavar="FOLDER_OR_HUB_ID",
            help=f"{location}; repeat it to condition on several score adapters at once, each in its own slot; "
            f"{default}",
        )
    else:
        parser.add_argument("--adapter", default=None, metavar="FOLDER_OR_HUB_ID", help=f"{location}; {default}")
    add_adapter_location_options(parser)
    parser.add_argument("--seed", type=seed, default=0, help="seed of the first image (0 to 2**63 - 1)")
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=f"sampling steps (default: {DEFAULT_STEPS}; the toy world's {TOY_STEPS} without --base)",
    )
    parser.add_argument(
        "--guidance",
        type=non_negative_number,
        default=None,
        help=f"CFG scale >= 0 (default: {DEFAULT_GUIDANCE}; the toy world's {TOY_GUIDANCE} without --base)",
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: fp16 on GPU)")
    add_threads_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (loading and generation)")
