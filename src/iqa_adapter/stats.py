"""Training-set statistics of quality metrics: normalisation and percentile tables.

An adapter is conditioned on z-scores, ``z = (score - mean) / std``, computed with the statistics of the
data set it was trained on. The statistics travel in the adapter's ``config.json`` so that a user can ask
for a percentile (``p99``) or a raw metric value and get the z-score the adapter expects.

Tables in the layout of the official IQA-Adapter ``CC3M_stats.csv`` (columns ``metric, min_val, max_val,
mean_val, std_val, quantile_1 ... quantile_99``) load with :func:`load_stats_table`; the CC3M table of
21 pyiqa metrics ships with the package (:func:`cc3m_stats`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

CC3M_STATS_FILE = "CC3M_stats.csv"


class QualityTargetError(ValueError):
    """A quality target that cannot be converted; the message lists what is valid."""


class QualityTargetWarning(UserWarning):
    """A quality target outside the scores the adapter was trained on."""


@dataclass(frozen=True)
class MetricStats:
    """Distribution of one metric over a training set.

    ``percentiles`` maps a percentile in (0, 100) to the raw metric value at that quantile of the data.
    ``higher_is_better`` orients percentiles in quality terms: ``p99`` is always "better than 99 % of the
    training images", which for a lower-is-better metric is the raw 1st percentile.
    """

    name: str
    mean: float
    std: float
    percentiles: dict[float, float] = field(default_factory=dict)
    higher_is_better: bool = True
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.std) or self.std <= 0:
            raise ValueError(f"metric {self.name!r}: std must be a positive number, got {self.std}")

    def z_from_raw(self, value: float) -> float:
        """Z-score of a raw metric value."""
        return (float(value) - self.mean) / self.std

    def raw_from_percentile(self, percentile: float) -> float:
        """Raw metric value at a quality percentile, linearly interpolated in the table."""
        if not self.percentiles:
            raise QualityTargetError(
                f"metric {self.name!r} has no percentile table; give a z-score (z1.5) or a raw value"
            )
        table = sorted(self.percentiles)
        low, high = table[0], table[-1]
        if not low <= percentile <= high:
            raise QualityTargetError(
                f"percentile p{percentile:g} for metric {self.name!r} is outside the adapter's table: valid "
                f"percentiles are p{low:g} to p{high:g} ({len(table)} table entries, interpolated between them)"
            )
        data_percentile = percentile if self.higher_is_better else 100.0 - percentile
        if not self.higher_is_better and not low <= data_percentile <= high:
            raise QualityTargetError(
                f"percentile p{percentile:g} of lower-is-better metric {self.name!r} needs the raw "
                f"p{data_percentile:g}, outside the table p{low:g} to p{high:g}"
            )
        return float(np.interp(data_percentile, table, [self.percentiles[p] for p in table]))

    def raw_range(self) -> tuple[float, float]:
        """The raw scores of the training data, (min, max); mean -/+ 4 std when the statistics lack them."""
        if self.min is not None and self.max is not None:
            return float(self.min), float(self.max)
        return self.mean - 4 * self.std, self.mean + 4 * self.std

    def z_from_percentile(self, percentile: float) -> float:
        """Z-score of the raw value at a quality percentile."""
        return self.z_from_raw(self.raw_from_percentile(percentile))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "mean": self.mean,
            "std": self.std,
            "higher_is_better": self.higher_is_better,
            "min": self.min,
            "max": self.max,
            "percentiles": {f"{p:g}": v for p, v in sorted(self.percentiles.items())},
        }

    @classmethod
    def from_dict(cls, data: dict) -> MetricStats:
        unknown = sorted(set(data) - {"name", "mean", "std", "higher_is_better", "min", "max", "percentiles"})
        if unknown:
            raise ValueError(f"metric statistics {data.get('name', '')!r}: unknown keys {', '.join(unknown)}")
        return cls(
            name=data["name"],
            mean=float(data["mean"]),
            std=float(data["std"]),
            percentiles={float(p): float(v) for p, v in data.get("percentiles", {}).items()},
            higher_is_better=bool(data.get("higher_is_better", True)),
            min=data.get("min"),
            max=data.get("max"),
        )

    @classmethod
    def from_scores(
        cls, name: str, scores, higher_is_better: bool = True, percentiles=tuple(range(1, 100))
    ) -> MetricStats:
        """Statistics of an array of raw scores (NaN and infinite values are ignored)."""
        values = np.asarray(scores, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size < 2:
            raise ValueError(f"metric {name!r}: need at least 2 finite scores for statistics, got {values.size}")
        quantiles = np.percentile(values, percentiles)
        return cls(
            name=name,
            mean=float(values.mean()),
            std=float(values.std()),
            percentiles={float(p): float(q) for p, q in zip(percentiles, quantiles)},
            higher_is_better=higher_is_better,
            min=float(values.min()),
            max=float(values.max()),
        )


def load_stats_table(path: str | Path) -> dict[str, MetricStats]:
    """Read a statistics table in the layout of the official ``CC3M_stats.csv``.

    Rows whose metric name ends in ``_normalized`` (statistics of the z-scores themselves) are skipped.
    """
    stats: dict[str, MetricStats] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        required = {"metric", "mean_val", "std_val"}
        missing = required - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{path}: not a statistics table, missing columns {sorted(missing)}; "
                "expected the layout of CC3M_stats.csv (metric, min_val, max_val, mean_val, "
                "std_val, quantile_1 ... quantile_99)"
            )
        for row in reader:
            name = row["metric"]
            if name.endswith("_normalized"):
                continue
            percentiles = {
                float(column[len("quantile_") :]): float(value)
                for column, value in row.items()
                if column and column.startswith("quantile_") and value not in ("", None)
            }
            stats[name] = MetricStats(
                name=name,
                mean=float(row["mean_val"]),
                std=float(row["std_val"]),
                percentiles=percentiles,
                higher_is_better=row.get("higher_is_better", "true").strip().lower() not in ("false", "0", "no"),
                min=float(row["min_val"]) if row.get("min_val") else None,
                max=float(row["max_val"]) if row.get("max_val") else None,
            )
    return stats


def cc3m_stats() -> dict[str, MetricStats]:
    """Statistics of 21 pyiqa metrics over CC3M (512x512), as used by the official IQA-Adapter weights."""
    with resources.as_file(resources.files("iqa_adapter") / "data" / CC3M_STATS_FILE) as path:
        return load_stats_table(path)


TABLE_QUANTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


def write_stats_table(stats: list[MetricStats], path: str | Path) -> None:
    """Write statistics in the layout of ``CC3M_stats.csv`` (quantiles 1, 5, 10, 25, 50, 75, 90, 95, 99),
    plus a ``higher_is_better`` column; :func:`load_stats_table` reads it back."""
    columns = ["", "metric", "min_val", "max_val", "mean_val", "std_val"]
    columns += [f"quantile_{q}" for q in TABLE_QUANTILES] + ["higher_is_better"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for index, metric in enumerate(stats):
            quantiles = [metric.percentiles.get(float(q), "") for q in TABLE_QUANTILES]
            writer.writerow(
                [
                    index,
                    metric.name,
                    metric.min,
                    metric.max,
                    metric.mean,
                    metric.std,
                    *quantiles,
                    str(metric.higher_is_better).lower(),
                ]
            )
