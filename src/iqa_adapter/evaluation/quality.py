"""The paper's quality experiments, computed from the scores of an evaluation's images.

For one adapter (its conditions in :mod:`~iqa_adapter.evaluation.plan`), every evaluation metric gives:

* ``percentile_sweep.<metric>``: the mean score at each input percentile and the Spearman correlation between
  the input percentile and the images' scores (paper Figures 1, 4, 10, 16, 17);
* ``relgain.p99.<metric>``, ``relgain.p1.<metric>``, ``negative_guidance.relgain.<metric>``: RelGain
  (section 4.2) against the base model, ``mean((f(x') - f(x)) / |f(x)|) * 100 %`` over pairs of images with
  the same prompt and seed (Figure 8 for negative guidance);
* ``scale_sweep.<metric>``: the mean score at each lambda, at p99 (``mean_scores``) and p1 (``mean_scores_low``)
  (Figure 13).

Several adapters against the same base images give the RelGain matrix of Figure 3a (:func:`relgain_matrix`).
RelGain and the correlations are oriented so that a positive value always means better quality: their sign is
flipped for lower-is-better metrics (PIQE, NIQE, noise, blockiness). RelGain divides by ``|f(x)|`` rather
than ``f(x)`` so that metrics with negative scores keep that orientation (for positive scores, as the
paper's, both are the same); pairs whose base score is 0 are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import spearmanr

from .plan import BASE, HIGH, LOW, EvaluationPlan

ORIENTATION = (
    "RelGain and Spearman are signed so that positive means better quality (sign flipped for lower-is-better metrics)"
)


def relgain(base: np.ndarray, new: np.ndarray, higher_is_better: bool = True) -> float:
    """RelGain in percent (paper section 4.2), positive = better; pairs with a zero base score are left out."""
    base, new = np.asarray(base, dtype=np.float64), np.asarray(new, dtype=np.float64)
    usable = np.isfinite(base) & np.isfinite(new) & (base != 0)
    if not usable.any():
        return float("nan")
    gain = float(np.mean((new[usable] - base[usable]) / np.abs(base[usable])) * 100)
    return gain if higher_is_better else -gain


def oriented_spearman(inputs: np.ndarray, scores: np.ndarray, higher_is_better: bool = True) -> float:
    """Spearman correlation of input levels and scores, positive when quality follows the input."""
    scores = np.asarray(scores, dtype=np.float64)
    usable = np.isfinite(scores)
    if usable.sum() < 3 or np.ptp(scores[usable]) == 0:
        return float("nan")
    rho = float(spearmanr(np.asarray(inputs)[usable], scores[usable]).statistic)
    return rho if higher_is_better else -rho


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def quality_report(
    plan: EvaluationPlan,
    adapter: str,
    targets: Sequence[str],
    scores: Mapping[str, np.ndarray],
    directions: Mapping[str, bool],
) -> dict:
    """The quality experiments of one adapter from every metric's scores (one value per plan item)."""
    conditions = {condition.name: condition for condition in plan.conditions}
    sweep_names = [name for name, c in conditions.items() if c.adapter == adapter and c.kind == "percentile"]
    percentiles = [conditions[name].percentile for name in sweep_names]
    default_scale = conditions[sweep_names[0]].scale

    def at(name: str, metric: str) -> np.ndarray:
        return scores[metric][plan.items_of(name)]

    def condition_at(percentile: int, scale: float) -> str:
        if scale == 0.0:
            return BASE
        if scale == default_scale:
            return f"{adapter}/p{percentile}"
        return f"{adapter}/scale_{scale:g}_p{percentile}"

    scales = sorted(
        {0.0, default_scale, *(c.scale for c in conditions.values() if c.adapter == adapter and c.kind == "scale")}
    )
    negative = next((name for name, c in conditions.items() if c.adapter == adapter and c.kind == "negative"), None)
    report: dict = {
        "target_metrics": list(targets),
        "default_scale": default_scale,
        "percentile_sweep": {},
        "scale_sweep": {},
    }
    for metric, higher in directions.items():
        per_percentile = [at(name, metric) for name in sweep_names]
        inputs = np.concatenate([np.full(len(values), p) for p, values in zip(percentiles, per_percentile)])
        report["percentile_sweep"][metric] = {
            "percentiles": percentiles,
            "mean_scores": [_mean(values) for values in per_percentile],
            "base_mean": _mean(at(BASE, metric)),
            "spearman": oriented_spearman(inputs, np.concatenate(per_percentile), higher),
        }
        report["scale_sweep"][metric] = {
            "scales": scales,
            "mean_scores": [_mean(at(condition_at(HIGH, scale), metric)) for scale in scales],
            "mean_scores_low": [_mean(at(condition_at(LOW, scale), metric)) for scale in scales],
        }
    report["relgain"] = {
        f"p{p}": {
            metric: relgain(at(BASE, metric), at(f"{adapter}/p{p}", metric), higher)
            for metric, higher in directions.items()
        }
        for p in (HIGH, LOW)
    }
    if negative is not None:
        report["negative_guidance"] = {
            "k": conditions[negative].negative_quality,
            "relgain": {
                metric: relgain(at(BASE, metric), at(negative, metric), higher) for metric, higher in directions.items()
            },
        }
    report["claims"] = claims(report)
    return report


def claims(report: dict) -> dict:
    """The paper's qualitative claims, checked against one adapter's numbers (True / False, never adjusted)."""
    targets = [name for name in report["target_metrics"] if name in report["percentile_sweep"]]
    others = [name for name in report["percentile_sweep"] if name not in report["target_metrics"]]
    p99, p1 = report["relgain"][f"p{HIGH}"], report["relgain"][f"p{LOW}"]
    negative = report.get("negative_guidance", {}).get("relgain")

    def every(values) -> bool | None:
        return all(values) if targets else None

    def most(values) -> bool | None:
        values = list(values)
        return sum(values) > len(values) / 2 if values else None

    checked = {
        "target_quality_follows_the_input_percentile": every(
            report["percentile_sweep"][n]["spearman"] > 0 for n in targets
        ),
        "p99_improves_every_target_metric": every(p99[n] > 0 for n in targets),
        "p99_improves_most_other_metrics": most(p99[n] > 0 for n in others),
        "p1_degrades_every_target_metric": every(p1[n] < 0 for n in targets),
    }
    if negative is not None:
        checked["negative_guidance_strengthens_the_p99_gain_on_every_target_metric"] = every(
            negative[n] > p99[n] for n in targets
        )
        checked["negative_guidance_strengthens_the_p99_gain_on_most_other_metrics"] = most(
            negative[n] > p99[n] for n in others
        )
    return checked


def relgain_matrix(
    reports: Mapping[str, dict], percentile: int = HIGH, groups: Mapping[str, Sequence[str]] | None = None
) -> dict:
    """RelGain at ``percentile`` per adapter (rows) and metric (columns), with the mean over metrics (Figure 3a)
    and, for each of ``groups`` (``{name: metric columns}``), the mean over its metrics (``mean_<name>``)."""

    def mean(values) -> float:
        finite = [value for value in values if np.isfinite(value)]
        return float(np.mean(finite)) if finite else float("nan")

    matrix = {}
    for adapter, report in reports.items():
        gains = report["relgain"][f"p{percentile}"]
        row = dict(gains)
        row["mean"] = mean(gains.values())
        for group, members in (groups or {}).items():
            unknown = sorted(set(members) - set(gains))
            if unknown:
                raise ValueError(f"metric group {group!r} names metrics that were not scored: {unknown}")
            row[f"mean_{group}"] = mean(gains[name] for name in members)
        matrix[adapter] = row
    return matrix
