"""One registry of quality metrics: list them, describe them, create them by name.

Built-in metrics register themselves with :func:`register_metric`. Names with a ``pyiqa:`` prefix come
from the optional pyiqa backend; a plain name that is not built in is looked up in pyiqa when it is
installed. Other prefixes name metrics made from an argument, such as ``loda:<checkpoint directory>`` or ``learned:<folder>``:
:data:`PREFIXED_METRICS` maps each prefix to the module that builds them (imported on first use).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .base import QualityMetric

PYIQA_PREFIX = "pyiqa:"
# prefix -> module providing prefixed_metric_info(argument) and create_prefixed_metric(argument, **options)
PREFIXED_METRICS = {"loda:": "iqa_adapter.loda.metric", "learned:": "iqa_adapter.metrics.learned"}


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is, without building it."""

    name: str
    higher_is_better: bool
    score_range: tuple[float, float]
    differentiable: bool
    description: str
    factory: Callable[..., QualityMetric]
    backend: str = "builtin"


_REGISTRY: dict[str, MetricInfo] = {}


def register_metric(cls: type[QualityMetric]) -> type[QualityMetric]:
    """Class decorator: register a built-in metric under ``cls.name`` (first docstring line = description)."""
    if cls.name in _REGISTRY:
        raise ValueError(f"metric {cls.name!r} is already registered")
    _REGISTRY[cls.name] = MetricInfo(
        name=cls.name,
        higher_is_better=cls.higher_is_better,
        score_range=tuple(cls.score_range),
        differentiable=cls.differentiable,
        description=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
        factory=cls,
    )
    return cls


def _load_builtins() -> None:
    from . import classical, niqe  # noqa: F401  (registration happens on import)


def builtin_metrics() -> dict[str, MetricInfo]:
    _load_builtins()
    return dict(_REGISTRY)


def list_metrics(include_pyiqa: bool = True) -> list[MetricInfo]:
    """Every available metric: the built-in ones, then pyiqa's no-reference metrics when pyiqa is installed."""
    infos = list(builtin_metrics().values())
    if include_pyiqa:
        from .pyiqa_backend import pyiqa_available, pyiqa_metric_infos

        if pyiqa_available():
            infos.extend(pyiqa_metric_infos())
    return infos


def _prefixed(name: str):
    """(module, argument) when ``name`` has one of the :data:`PREFIXED_METRICS` prefixes, else None."""
    for prefix, module in PREFIXED_METRICS.items():
        if name.startswith(prefix):
            return importlib.import_module(module), name[len(prefix) :]
    return None


def resolve_metric_path(name: str, directory: str | Path) -> str:
    """``name`` with a relative checkpoint path (``loda:../loda``) made absolute against ``directory``.

    Configs that travel with a folder (an adapter and the LoDa checkpoint beside it) can so name their metric
    by a relative path; other names are returned unchanged.
    """
    for prefix in PREFIXED_METRICS:
        if name.startswith(prefix):
            argument = Path(name[len(prefix) :])
            if not argument.is_absolute() and (Path(directory) / argument).exists():
                return prefix + str((Path(directory) / argument).resolve())
    return name


def metric_info(name: str) -> MetricInfo:
    """Describe a metric by name without building it."""
    prefixed = _prefixed(name)
    if prefixed is not None:
        module, argument = prefixed
        return module.prefixed_metric_info(argument)
    builtins = builtin_metrics()
    if name in builtins:
        return builtins[name]
    from .pyiqa_backend import pyiqa_metric_info

    with _plain_names_need_pyiqa(name, builtins):
        return pyiqa_metric_info(name.removeprefix(PYIQA_PREFIX), unknown_hint=_unknown_hint(name, builtins))


def create_metric(name: str, device=None, **options) -> QualityMetric:
    """Build a metric by registry name (``piqe``, ``pyiqa:topiq_nr``, ``topiq_nr``, ``loda:<dir>``) on ``device``."""
    prefixed = _prefixed(name)
    if prefixed is not None:
        module, argument = prefixed
        metric = module.create_prefixed_metric(argument, **options)
        return metric.to(device) if device is not None else metric
    builtins = builtin_metrics()
    if name in builtins and not name.startswith(PYIQA_PREFIX):
        metric = builtins[name].factory(**options)
        return metric.to(device) if device is not None else metric
    from .pyiqa_backend import create_pyiqa_metric

    with _plain_names_need_pyiqa(name, builtins):
        return create_pyiqa_metric(
            name.removeprefix(PYIQA_PREFIX), device=device, unknown_hint=_unknown_hint(name, builtins), **options
        )


@contextmanager
def _plain_names_need_pyiqa(name: str, builtins: dict[str, MetricInfo]):
    """A plain name that is not built in, asked of a missing pyiqa, is first of all an unknown name."""
    from .pyiqa_backend import MetricUnavailableError, pyiqa_available

    try:
        yield
    except MetricUnavailableError as error:
        if name.startswith(PYIQA_PREFIX) or pyiqa_available():  # pyiqa is there: a real problem of that metric
            raise
        raise KeyError(
            f"unknown metric {name!r}: {_unknown_hint(name, builtins)}. (pyiqa is not available here: {error})"
        ) from None


def _unknown_hint(name: str, builtins: dict[str, MetricInfo]) -> str:
    return (
        f"{name!r} is not a built-in metric (built-in: {', '.join(sorted(builtins))}); other names are "
        "looked up in pyiqa (`pip install iqa-adapter[pyiqa]`, names as `pyiqa:topiq_nr`); trained LoDa "
        "checkpoints are `loda:<checkpoint directory>`"
    )
