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

from .base import QualityMetric
from .registry import PYIQA_PREFIX, MetricInfo

INSTALL_HINT = "pip install 'iqa-adapter[pyiqa]' (pyiqa needs a torchvision build that matches your torch)"


class MetricUnavailableError(RuntimeError):
    """A metric that cannot be built here: missing package or weights; the message says what to do."""


def weights_dir() -> str:
    """Where pyiqa looks for (and downloads) its weight files."""
    return os.path.join(torch.hub.get_dir(), "pyiqa")


def _import_pyiqa():
    try:
        return importlib.import_module("pyiqa")
    except ImportError as error:
        raise MetricUnavailableError(f"pyiqa metrics need pyiqa, which is not importable ({error}); {INSTALL_HINT}") from None
    except Exception as error:  # a broken torchvision raises RuntimeError at import time
        raise MetricUnavailableError(f"pyiqa failed to import: {error}; {INSTALL_HINT}") from None


def pyiqa_available() -> bool:
    """Whether pyiqa imports here."""
    try:
        _import_pyiqa()
    except MetricUnavailableError:
        return False
    return True


def _configs() -> dict:
    pyiqa = _import_pyiqa()
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
        raise ValueError(f"pyiqa metric {name!r} is full-reference; quality conditioning needs no-reference "
                         "metrics (`iqa-adapter metrics` lists them)")
    return MetricInfo(
        name=PYIQA_PREFIX + name,
        higher_is_better=not config.get("lower_better", False),
        score_range=_parse_range(config.get("score_range", "")),
        differentiable=True,
        description=f"pyiqa {name}",
        factory=lambda **options: PyIQAMetric(name, **options),
        backend="pyiqa",
    )


def pyiqa_metric_infos() -> list[MetricInfo]:
    """Every pyiqa no-reference metric."""
    configs = _configs()
    return [pyiqa_metric_info(name) for name, config in sorted(configs.items()) if config.get("metric_mode") == "NR"]


def create_pyiqa_metric(name: str, device=None, unknown_hint: str = "", **options) -> "PyIQAMetric":
    """Build a pyiqa metric (errors name the missing package, the unknown metric, or the missing weights)."""
    pyiqa_metric_info(name, unknown_hint)  # validates the name before any download
    return PyIQAMetric(name, device=device, **options)


class PyIQAMetric(QualityMetric):
    """A pyiqa no-reference metric. Inputs: RGB (N, 3, H, W) in [0, 1]; pyiqa resizes as the metric needs.

    Scores keep pyiqa's orientation and units; ``higher_is_better`` comes from pyiqa's ``lower_better``.
    Gradient mode builds pyiqa's loss-mode model (``as_loss=True``, no reduction) on first use.
    """

    differentiable = True

    def __init__(self, name: str, device=None, **options):
        super().__init__()
        info = pyiqa_metric_info(name)
        self.name = info.name
        self.pyiqa_name = name
        self.higher_is_better = info.higher_is_better
        self.score_range = info.score_range
        self._options = options
        self.model = self._build(as_loss=False, device=torch.device(device or "cpu"))
        self.loss_model = None

    def _build(self, as_loss: bool, device: torch.device):
        pyiqa = _import_pyiqa()
        extra = {"loss_reduction": "none", "loss_weight": 1.0} if as_loss else {}
        try:
            return pyiqa.create_metric(self.pyiqa_name, as_loss=as_loss, device=device, **extra, **self._options)
        except (OSError, ConnectionError, TimeoutError) as error:
            raise MetricUnavailableError(
                f"could not load the weights of pyiqa metric {self.pyiqa_name!r} ({error}). Offline, place pyiqa's "
                f"weight file(s) for it in {weights_dir()} (the names in pyiqa's download URLs); CLIP-based "
                "metrics also need their backbone in the Hugging Face cache"
            ) from None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        use_loss_model = torch.is_grad_enabled() and self.loss_model is not None
        output = (self.loss_model if use_loss_model else self.model)(images.to(self.device))
        if isinstance(output, tuple):
            output = output[0]
        return output.reshape(-1)

    def score_with_grad(self, images: torch.Tensor) -> torch.Tensor:
        if self.loss_model is None:
            self.loss_model = self._build(as_loss=True, device=self.device)
        return super().score_with_grad(images)
