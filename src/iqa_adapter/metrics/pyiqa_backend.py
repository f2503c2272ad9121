"""The optional pyiqa backend: any pyiqa no-reference metric through the registry interface.

Install with ``pip install iqa-adapter[pyiqa]`` (pyiqa needs torchvision). Names are pyiqa's
(``pyiqa:topiq_nr``, or plainly ``topiq_nr`` where no built-in metric has that name). pyiqa downloads the
weights at first use into ``<torch hub dir>/pyiqa``; for offline use, place the files there beforehand
(see :func:`weights_dir`).
"""

from __future__ import annotations

import difflib
import importlib
import os

import torch

from .base import NotDifferentiableError, QualityMetric
from .registry import PYIQA_PREFIX, MetricInfo

INSTALL_HINT = "pip install 'iqa-adapter[pyiqa]' (pyiqa needs a torchvision build that matches your torch)"

NOT_DIFFERENTIABLE = frozenset({"entropy", "piqe", "nrqm", "pi"})
"""pyiqa metrics without useful gradients, although pyiqa builds them with ``as_loss=True``: ``entropy`` counts
integer grey levels (its scores carry no gradient), ``piqe`` rounds the luma with ``torch.round`` (its gradient
is zero everywhere), ``nrqm`` and ``pi`` (which contains nrqm) compute in NumPy."""


class MetricUnavailableError(RuntimeError):
    """A metric that cannot be built here: missing package or weights; the message says what to do."""


def weights_dir() -> str:
    """Where pyiqa looks for (and downloads) its weight files."""
    return os.path.join(torch.hub.get_dir(), "pyiqa")


def import_pyiqa():
    """The pyiqa module, or MetricUnavailableError with the install hint."""
    try:
        return importlib.import_module("pyiqa")
    except ImportError as error:
        raise MetricUnavailableError(
            f"pyiqa metrics need pyiqa, which is not importable ({error}); {INSTALL_HINT}"
        ) from None
    except Exception as error:  # a broken torchvision raises RuntimeError at import time
        raise MetricUnavailableError(f"pyiqa failed to import: {error}; {INSTALL_HINT}") from None


def pyiqa_available() -> bool:
    """Whether pyiqa imports here."""
    try:
        import_pyiqa()
    except MetricUnavailableError:
        return False
    return True


def _configs() -> dict:
    pyiqa = import_pyiqa()
    try:
        return importlib.import_module("pyiqa.default_model_configs").DEFAULT_CONFIGS
    except (ImportError, AttributeError):
        return {name: {"metric_mode": "NR"} for name in pyiqa.list_models(metric_mode="NR")}


def _parse_range(text) -> tuple[float, float]:
    """pyiqa's score ranges are strings like ``"~0, ~1"`` or ``"0, 100"``."""
    try:
        low, high = (float(part.strip().lstrip("~")) for part in str(text).split(","))
        return low, high
    except ValueError:
        return float("-inf"), float("inf")


def pyiqa_metric_info(name: str, unknown_hint: str = "") -> MetricInfo:
    """Describe a pyiqa no-reference metric without building it (no download)."""
    configs = _configs()
    if name not in configs:
        no_reference = sorted(n for n, c in configs.items() if c.get("metric_mode") == "NR")
        close = difflib.get_close_matches(name, no_reference, n=5)
        suggestion = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown metric {name!r}.{suggestion} {unknown_hint}".strip())
    config = configs[name]
    if config.get("metric_mode") != "NR":
        raise ValueError(
            f"pyiqa metric {name!r} is full-reference; quality conditioning needs no-reference "
            "metrics (`iqa-adapter metrics` lists them)"
        )
    return MetricInfo(
        name=PYIQA_PREFIX + name,
        higher_is_better=not config.get("lower_better", False),
        score_range=_parse_range(config.get("score_range", "")),
        differentiable=name not in NOT_DIFFERENTIABLE,
        description=f"pyiqa {name}",
        factory=lambda **options: PyIQAMetric(name, **options),
        backend="pyiqa",
    )


def pyiqa_metric_infos() -> list[MetricInfo]:
    """Every pyiqa no-reference metric."""
    configs = _configs()
    return [pyiqa_metric_info(name) for name, config in sorted(configs.items()) if config.get("metric_mode") == "NR"]


def create_pyiqa_metric(name: str, device=None, unknown_hint: str = "", **options) -> PyIQAMetric:
    """Build a pyiqa metric (errors name the missing package, the unknown metric, or the missing weights)."""
    pyiqa_metric_info(name, unknown_hint)  # validates the name before any download
    return PyIQAMetric(name, device=device, **options)


class PyIQAMetric(QualityMetric):
    """A pyiqa no-reference metric. Inputs: RGB (N, 3, H, W) in [0, 1]; pyiqa resizes as the metric needs.

    Scores keep pyiqa's orientation and units; ``higher_is_better`` comes from pyiqa's ``lower_better``.
    Input values are clamped to [0, 1] (pyiqa asserts the range to 1e-6, :func:`check_images` allows 1e-3;
    gradients pass unchanged), and scores come back on the images' device. Gradient mode builds pyiqa's
    loss-mode model (``as_loss=True``, no reduction) on first use; metrics in :data:`NOT_DIFFERENTIABLE`
    refuse it.
    """

    def __init__(self, name: str, device=None, **options):
        super().__init__()
        info = pyiqa_metric_info(name)
        self.name = info.name
        self.pyiqa_name = name
        self.higher_is_better = info.higher_is_better
        self.score_range = info.score_range
        self.differentiable = info.differentiable
        self._options = options
        self.model = self._build(as_loss=False, device=torch.device(device or "cpu"))
        self.loss_model = None

    def _build(self, as_loss: bool, device: torch.device):
        pyiqa = import_pyiqa()
        # no loss_weight: pyiqa multiplies by it as an element-wise weight tensor (a float fails its asserts)
        extra = {"loss_reduction": "none"} if as_loss else {}
        try:
            model = pyiqa.create_metric(self.pyiqa_name, as_loss=as_loss, device=device, **extra, **self._options)
        except ImportError as error:  # e.g. CLIP metrics need pkg_resources (setuptools < 81), Q-Align icecream
            raise MetricUnavailableError(
                f"pyiqa metric {self.pyiqa_name!r} needs a package that is not installed here ({error}); install "
                "it in this environment"
            ) from None
        except (OSError, ConnectionError, TimeoutError) as error:
            raise MetricUnavailableError(
                f"could not load the weights of pyiqa metric {self.pyiqa_name!r} ({error}). Offline, place pyiqa's "
                f"weight file(s) for it in {weights_dir()} (the names in pyiqa's download URLs); CLIP-based "
                "metrics also need their backbone in the Hugging Face cache"
            ) from None
        _register_device_marker(model)
        return model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        use_loss_model = torch.is_grad_enabled() and self.loss_model is not None
        images_here = images.to(self.device)
        # into [0, 1] for pyiqa's range assert, with the gradient passed straight through (clamp's is 0 at 0 and 1)
        images_here = images_here + (images_here.clamp(0, 1) - images_here).detach()
        output = (self.loss_model if use_loss_model else self.model)(images_here)
        if isinstance(output, tuple):
            output = output[0]
        return output.reshape(-1).to(images.device)

    def score_with_grad(self, images: torch.Tensor) -> torch.Tensor:
        if self.differentiable and self.loss_model is None:
            self.loss_model = self._build(as_loss=True, device=self.device)
        scores = super().score_with_grad(images)
        if images.requires_grad and not scores.requires_grad:
            raise NotDifferentiableError(
                f"pyiqa metric {self.pyiqa_name!r} returned scores without gradients; it cannot guide generation"
            )
        return scores


def _register_device_marker(model) -> None:
    """Make pyiqa's device marker a buffer, so that ``.to()`` moves it and :attr:`QualityMetric.device` reads it.

    pyiqa computes on the device of its ``dummy_param``, made by ``Parameter(...).to(device)``: a registered
    parameter on the CPU, but a plain tensor attribute on any other device (``.to`` then returns a plain
    tensor), which ``.to()`` leaves behind and ``.parameters()`` does not list.
    """
    marker = getattr(model, "dummy_param", None)
    if (
        isinstance(marker, torch.Tensor)
        and isinstance(model, torch.nn.Module)
        and "dummy_param" not in model._parameters
        and "dummy_param" not in model._buffers
    ):
        del model.dummy_param
        model.register_buffer("dummy_param", marker.detach(), persistent=False)
