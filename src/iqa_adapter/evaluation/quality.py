"""The paper's quality experiments for any adapter: percentile sweep, RelGain, adapter scale, negative guidance.

:func:`evaluate_adapter` generates, for fixed prompts and seeds (the same initial noise everywhere, so every
comparison is paired),

* the base model's images (the adapter at lambda = 0, which is bit-identical to the base model);
* a **percentile sweep**: every conditioning metric set to the same training-set percentile, p1 ... p99
  (paper Figures 1, 4, 10, 16, 17);
* an **adapter-scale sweep** at the p99 and p1 targets (Figure 13);
* p99 with **negative quality guidance** (``-k * q`` in the unconditional branch, section 8, Figure 8);

and scores every image with every evaluation metric. It reports, per metric:

* ``percentile_sweep.<metric>``: the mean score at each input percentile and the Spearman correlation
  between the input percentile and the images' scores;
* ``relgain.p99.<metric>``, ``relgain.p1.<metric>``, ``negative_guidance.relgain.<metric>``: RelGain
  (section 4.2) against the base model, ``mean((f(x') - f(x)) / |f(x)|) * 100 %`` over pairs of images with
  the same prompt and seed;
* ``scale_sweep.<metric>``: the mean score at each lambda, at p99 (``mean_scores``) and p1 (``mean_scores_low``).

RelGain and the correlations are oriented so that a positive value always means better quality: their sign is
flipped for lower-is-better metrics (PIQE, NIQE, noise, blockiness). RelGain divides by ``|f(x)|`` rather
than ``f(x)`` so that metrics with negative scores keep that orientation (for positive scores, as the
paper's, both are the same); pairs whose base score is 0 are left out.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from ..adapter import IQAAdapter
from ..generation import GeneratedImage, generate
from ..grid import image_grid
from ..io_utils import atomic_write, write_json
from ..metrics import QualityMetric

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class EvaluationSettings:
    """What :func:`evaluate_adapter` generates: prompts x seeds images per condition."""

    prompts: Sequence[str]
    seeds: int = 4
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    percentiles: Sequence[int] = PERCENTILES
    scales: Sequence[float] = SCALES
    negative_quality: float = 1.0
    scale: float | None = None  # lambda of the percentile sweep and negative guidance; None: the adapter's default
    batch_size: int = 32
    pipeline_kwargs: dict = field(default_factory=dict)


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


def score_images(images: Sequence[Image.Image], metrics: Mapping[str, QualityMetric], batch_size: int = 64
                 ) -> dict[str, np.ndarray]:
    """Scores of PIL images with every metric (NaN where a metric fails on an image)."""
    scores = {name: [] for name in metrics}
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
                              for image in images[start:start + batch_size]])
        for name, metric in metrics.items():
            scores[name].append(metric.score(pixels.to(metric.device)).cpu().numpy())
    return {name: np.concatenate(values) for name, values in scores.items()}


@dataclass
class _Condition:
    """One generated condition: its images (prompt-major, then seed) and their scores."""

    name: str
    results: list[GeneratedImage]
    scores: dict[str, np.ndarray] = field(default_factory=dict)


def evaluate_adapter(pipe, adapter: IQAAdapter, metrics: Mapping[str, QualityMetric], settings: EvaluationSettings,
                     out_dir: str | Path, progress: bool = True) -> dict:
    """Run the experiments of this module, write images, figures and reports to ``out_dir``; return the report."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if not adapter.is_attached:
        adapter.attach(pipe)
    default_scale = adapter.config.default_scale if settings.scale is None else settings.scale
    targets = adapter.metric_names
    directions = {name: metric.higher_is_better for name, metric in metrics.items()}

    def condition(name: str, percentile: int, scale: float, negative: float | None = None) -> _Condition:
        results = generate(pipe, adapter, settings.prompts, {metric: f"p{percentile}" for metric in targets},
                           scale=scale, negative_quality=negative, seed=settings.seed, num_images=settings.seeds,
                           steps=settings.steps, guidance=settings.guidance, batch_size=settings.batch_size,
                           progress=False, **settings.pipeline_kwargs)
        for result in results:
            result.settings["experiment"] = name
        return _Condition(name, results)

    plan = [("base", 50, 0.0, None)]
    plan += [(f"percentile_p{p}", p, default_scale, None) for p in settings.percentiles]
    plan += [(f"scale_{scale:g}_p{p}", p, scale, None) for scale in settings.scales for p in (99, 1)
             if scale != 0.0 and not (scale == default_scale and p in settings.percentiles)]
    plan += [("negative_guidance_p99", 99, default_scale, settings.negative_quality)]
    conditions: dict[str, _Condition] = {}
    for name, percentile, scale, negative in tqdm(plan, desc="evaluate", unit="condition", disable=not progress):
        conditions[name] = condition(name, percentile, scale, negative)
        conditions[name].scores = score_images([r.image for r in conditions[name].results], metrics)

    def scores_at(percentile: int, scale: float) -> dict[str, np.ndarray]:
        if scale == 0.0:
            return conditions["base"].scores
        name = f"percentile_p{percentile}" if scale == default_scale else f"scale_{scale:g}_p{percentile}"
        return conditions[name].scores

    base = conditions["base"].scores
    report: dict = {"target_metrics": targets, "metrics": {name: {"higher_is_better": directions[name]} for name in metrics},
                    "orientation": "RelGain and Spearman are signed so that positive means better quality (sign "
                                   "flipped for lower-is-better metrics)",
                    "settings": {"prompts": list(settings.prompts), "seeds": settings.seeds, "steps": settings.steps,
                                 "guidance": settings.guidance, "default_scale": default_scale,
                                 "negative_quality": settings.negative_quality}}
    sweep = {}
    for name in metrics:
        per_percentile = [scores_at(p, default_scale)[name] for p in settings.percentiles]
        inputs = np.concatenate([np.full(len(values), p) for p, values in zip(settings.percentiles, per_percentile)])
        sweep[name] = {"percentiles": list(settings.percentiles),
                       "mean_scores": [float(np.nanmean(values)) for values in per_percentile],
                       "base_mean": float(np.nanmean(base[name])),
                       "spearman": oriented_spearman(inputs, np.concatenate(per_percentile), directions[name])}
    report["percentile_sweep"] = sweep
    report["relgain"] = {f"p{p}": {name: relgain(base[name], scores_at(p, default_scale)[name], directions[name])
                                   for name in metrics} for p in (99, 1)}
    negative = conditions["negative_guidance_p99"].scores
    report["negative_guidance"] = {"relgain": {name: relgain(base[name], negative[name], directions[name])
                                               for name in metrics}}
    report["scale_sweep"] = {name: {"scales": list(settings.scales),
                                    "mean_scores": [float(np.nanmean(scores_at(99, s)[name])) for s in settings.scales],
                                    "mean_scores_low": [float(np.nanmean(scores_at(1, s)[name])) for s in settings.scales]}
                             for name in metrics}
    report["n_images"] = sum(len(c.results) for c in conditions.values())
    report["claims"] = _claims(report)
    report["seconds"] = round(time.perf_counter() - started, 1)

    _write_images(out_dir, conditions.values())
    figures = _write_figures(out_dir, report, conditions, settings, targets)
    report["figures"] = figures
    write_json(out_dir / "report.json", report)
    atomic_write(out_dir / "report.md", lambda path: Path(path).write_text(report_markdown(report)))
    return report


def _claims(report: dict) -> dict:
    """The paper's qualitative claims, checked against this run's numbers (True / False, never adjusted)."""
    targets = report["target_metrics"]
    others = [name for name in report["percentile_sweep"] if name not in targets]
    evaluated_targets = [name for name in targets if name in report["percentile_sweep"]]
    p99, p1 = report["relgain"]["p99"], report["relgain"]["p1"]
    negative = report["negative_guidance"]["relgain"]
    claims = {
        "target_quality_follows_the_input_percentile": all(
            report["percentile_sweep"][name]["spearman"] > 0 for name in evaluated_targets) if evaluated_targets else None,
        "p99_improves_every_target_metric": all(p99[name] > 0 for name in evaluated_targets) if evaluated_targets else None,
        "p99_improves_most_other_metrics": (sum(p99[name] > 0 for name in others) > len(others) / 2) if others else None,
        "p1_degrades_every_target_metric": all(p1[name] < 0 for name in evaluated_targets) if evaluated_targets else None,
        "negative_guidance_strengthens_the_p99_gain_on_every_target_metric": all(
            negative[name] > p99[name] for name in evaluated_targets) if evaluated_targets else None,
        "negative_guidance_strengthens_the_p99_gain_on_most_other_metrics": (
            sum(negative[name] > p99[name] for name in others) > len(others) / 2) if others else None,
    }
    return claims


def _write_images(out_dir: Path, conditions) -> None:
    """Every image under ``images/<experiment>/NNNN.png`` and one CSV of what made each."""
    rows = []
    for condition in conditions:
        folder = out_dir / "images" / condition.name
        for index, result in enumerate(condition.results):
            path = folder / f"{index:04d}.png"
            atomic_write(path, lambda temporary, image=result.image: image.save(temporary, format="PNG"))
            settings = result.settings
            rows.append({"file": path.relative_to(out_dir).as_posix(), "experiment": condition.name,
                         "prompt": settings["prompt"], "seed": settings["seed"],
                         "quality": json.dumps(settings["quality"]), "scale": settings["scale"],
                         "negative_quality": settings["negative_quality"],
                         **{f"score_{name}": float(values[index]) for name, values in condition.scores.items()}})

    def write(temporary: str) -> None:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(out_dir / "images" / "images.csv", write)


def _write_figures(out_dir: Path, report: dict, conditions: dict[str, _Condition], settings: EvaluationSettings,
                   targets: list[str]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}

    # image grid: one row per prompt (first seed), columns base then p1 ... p99 (paper Figures 1 and 17)
    columns = ["base"] + [f"percentile_p{p}" for p in settings.percentiles]
    images = [conditions[name].results[index * settings.seeds].image
              for index in range(len(settings.prompts)) for name in columns]
    grid = image_grid(images, columns=len(columns), row_labels=[p[:48] for p in settings.prompts],
                      column_labels=["base"] + [f"p{p}" for p in settings.percentiles], min_cell=96)
    paths["percentile_grid"] = _save(lambda p: grid.save(p, format="PNG"), figures_dir / "percentile_grid.png", out_dir)

    names = list(report["percentile_sweep"])
    columns_count = min(4, len(names))
    rows_count = -(-len(names) // columns_count)
    figure, axes = plt.subplots(rows_count, columns_count, figsize=(3.2 * columns_count, 2.6 * rows_count), squeeze=False)
    for axis, name in zip(axes.flat, names):
        sweep = report["percentile_sweep"][name]
        axis.plot(sweep["percentiles"], sweep["mean_scores"], marker="o")
        axis.axhline(sweep["base_mean"], color="red", linestyle=":", label="base model")
        better = "higher" if report["metrics"][name]["higher_is_better"] else "lower"
        axis.set_title(f"{name}{' (target)' if name in targets else ''}\nrho={sweep['spearman']:+.2f}, {better} better",
                       fontsize=8)
        axis.set_xlabel("input percentile", fontsize=7)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    figure.tight_layout()
    paths["percentile_sweep"] = _save(lambda p: figure.savefig(p, format="png", dpi=110), figures_dir / "percentile_sweep.png", out_dir)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(max(5, 0.9 * len(names)), 3.2))
    width = 0.27
    positions = np.arange(len(names))
    for offset, (label, values) in enumerate((("p99", report["relgain"]["p99"]), ("p1", report["relgain"]["p1"]),
                                              ("p99 + negative guidance", report["negative_guidance"]["relgain"]))):
        axis.bar(positions + (offset - 1) * width, [values[name] for name in names], width, label=label)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(positions, [f"{n}*" if n in targets else n for n in names], rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("RelGain vs base (%), + = better", fontsize=8)
    axis.set_title("RelGain against the base model (* = conditioning metric)", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    paths["relgain"] = _save(lambda p: figure.savefig(p, format="png", dpi=110), figures_dir / "relgain.png", out_dir)
    plt.close(figure)

    figure, axes = plt.subplots(rows_count, columns_count, figsize=(3.2 * columns_count, 2.6 * rows_count), squeeze=False)
    for axis, name in zip(axes.flat, names):
        sweep = report["scale_sweep"][name]
        axis.plot(sweep["scales"], sweep["mean_scores"], marker="o", label="p99")
        axis.plot(sweep["scales"], sweep["mean_scores_low"], marker="o", linestyle="--", label="p1")
        axis.axhline(report["percentile_sweep"][name]["base_mean"], color="red", linestyle=":")
        axis.set_title(name, fontsize=8)
        axis.set_xlabel("adapter scale lambda", fontsize=7)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    paths["scale_sweep"] = _save(lambda p: figure.savefig(p, format="png", dpi=110), figures_dir / "scale_sweep.png", out_dir)
    plt.close(figure)
    return paths


def _save(save, path: Path, out_dir: Path) -> str:
    atomic_write(path, lambda temporary: save(temporary))
    return path.relative_to(out_dir).as_posix()


def report_markdown(report: dict) -> str:
    """The report as a Markdown page: claims, then one table per experiment."""
    names = list(report["percentile_sweep"])
    targets = report["target_metrics"]
    lines = ["# IQA-Adapter evaluation", "",
             f"Conditioning metrics: {', '.join(targets)}. {report['n_images']} images in {report['seconds']} s. "
             f"{report['orientation']}.", "", "## Claims of the paper, checked on this run", ""]
    lines += [f"- {claim.replace('_', ' ')}: **{'yes' if value else 'no' if value is not None else 'n/a'}**"
              for claim, value in report["claims"].items()]
    lines += ["", "## RelGain against the base model (%)", "",
              "| metric | better | p99 | p1 | p99 + negative guidance | percentile Spearman |", "|---|---|---|---|---|---|"]
    for name in names:
        better = "higher" if report["metrics"][name]["higher_is_better"] else "lower"
        lines.append(f"| {name}{' (target)' if name in targets else ''} | {better} | {report['relgain']['p99'][name]:+.2f} | "
                     f"{report['relgain']['p1'][name]:+.2f} | {report['negative_guidance']['relgain'][name]:+.2f} | "
                     f"{report['percentile_sweep'][name]['spearman']:+.3f} |")
    sweep = report["percentile_sweep"][names[0]]["percentiles"]
    lines += ["", "## Mean score per input percentile", "",
              "| metric | base | " + " | ".join(f"p{p}" for p in sweep) + " |", "|---" * (len(sweep) + 2) + "|"]
    for name in names:
        values = report["percentile_sweep"][name]
        lines.append(f"| {name} | {values['base_mean']:.4g} | " + " | ".join(f"{v:.4g}" for v in values["mean_scores"]) + " |")
    scales = report["scale_sweep"][names[0]]["scales"]
    lines += ["", "## Mean score per adapter scale (p99 / p1)", "",
              "| metric | " + " | ".join(f"lambda={s:g}" for s in scales) + " |", "|---" * (len(scales) + 1) + "|"]
    for name in names:
        values = report["scale_sweep"][name]
        lines.append(f"| {name} | " + " | ".join(f"{hi:.4g} / {lo:.4g}" for hi, lo in
                                                 zip(values["mean_scores"], values["mean_scores_low"])) + " |")
    lines += ["", "Figures: " + ", ".join(f"`{path}`" for path in report.get("figures", {}).values()), ""]
    return "\n".join(lines)
