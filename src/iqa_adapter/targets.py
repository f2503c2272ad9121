"""Quality targets: what a user asks for, turned into the z-scores an adapter is conditioned on.

A target for one metric is written as

* ``p99``  - a percentile of the training set's scores, in quality order (p99 = better than 99 %);
* ``z2.0`` - a z-score directly (standard deviations from the training-set mean);
* ``0.73`` - a raw metric value, normalised with the training set's mean and std.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

from .stats import MetricStats, QualityTargetError, QualityTargetWarning

QualityTarget = str | float
"""One metric's target: ``"p99"``, ``"z2.0"``, ``"0.73"`` or a float (raw value)."""


def target_to_z(target: QualityTarget, stats: MetricStats) -> float:
    """Convert one metric's target to the z-score the adapter expects."""
    if isinstance(target, bool):
        raise QualityTargetError(f"quality target for {stats.name!r} must be p<percentile>, z<z-score> or a number")
    text = str(target).strip().lower()
    kind, number = (text[0], text[1:]) if text[:1] in ("p", "z") else ("raw", text)
    try:
        value = float(number)
    except ValueError:
        raise QualityTargetError(
            f"cannot read quality target {target!r} for metric {stats.name!r}: write p<percentile> (p99), "
            f"z<z-score> (z2.0) or a raw metric value (0.73)"
        ) from None
    if not math.isfinite(value):
        raise QualityTargetError(f"quality target {target!r} for metric {stats.name!r} is not a finite number")
    if kind == "p":
        return stats.z_from_percentile(value)
    z = value if kind == "z" else stats.z_from_raw(value)
    low, high = (stats.z_from_raw(raw) for raw in stats.raw_range())
    if not low <= z <= high:
        warnings.warn(
            f"quality target {target!r} for {stats.name!r} (z = {z:.4g}) lies outside the scores the adapter was "
            f"trained on (z {low:.3g} to {high:.3g}); the adapter never saw it, so expect unpredictable images",
            QualityTargetWarning,
            stacklevel=3,
        )
    return z


def targets_to_z(
    targets: Mapping[str, QualityTarget],
    metrics: Sequence[MetricStats],
    defaults: Mapping[str, QualityTarget] | None = None,
) -> list[float]:
    """Z-scores for every metric of an adapter, in the adapter's metric order.

    Every metric of the adapter needs a target (given, or a default of the adapter's config), and no other
    metric may be named.
    """
    targets = {**(defaults or {}), **targets}
    known = [m.name for m in metrics]
    unknown = [name for name in targets if name not in known]
    if unknown:
        raise QualityTargetError(
            f"unknown metric(s) {', '.join(map(repr, unknown))}; this adapter is conditioned on: {', '.join(known)}"
        )
    missing = [name for name in known if name not in targets]
    if missing:
        example = " ".join(f"--quality {name}=p50" for name in missing)
        raise QualityTargetError(
            f"missing quality target for {', '.join(map(repr, missing))}; this adapter needs one for each of "
            f"{', '.join(known)} (e.g. {example})"
        )
    return [target_to_z(targets[m.name], m) for m in metrics]


def parse_quality_assignment(text: str) -> tuple[str, str]:
    """Split a CLI ``metric=target`` assignment."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise QualityTargetError(f"expected METRIC=TARGET (e.g. topiq_nr=p99), got {text!r}")
    return name.strip(), value.strip()
