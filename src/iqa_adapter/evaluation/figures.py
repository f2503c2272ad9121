"""The evaluation's figures: PNG files a person can read at a glance, each titled with what it shows and how many
prompts and images are behind it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..grid import image_grid
from ..io_utils import atomic_write

GRID_PROMPTS = 8  # rows of an image grid: the first prompts, first seed


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure_or_image, path: Path, out_dir: Path) -> str:
    """Write a matplotlib figure or a PIL image atomically; the path relative to ``out_dir``."""
    if isinstance(figure_or_image, Image.Image):
        atomic_write(path, lambda temporary: figure_or_image.save(temporary, format="PNG"))
    else:
        atomic_write(path, lambda temporary: figure_or_image.savefig(temporary, format="png", dpi=110))
        _pyplot().close(figure_or_image)
    return path.relative_to(out_dir).as_posix()


def condition_grid(
    images: Callable[[str, int], Image.Image], conditions: Sequence[str], labels: Sequence[str], prompts: Sequence[str]
) -> Image.Image:
    """One row per prompt (the first :data:`GRID_PROMPTS`), one column per condition; ``images(condition, prompt)``."""
    shown = list(prompts[:GRID_PROMPTS])
    cells = [images(condition, index) for index in range(len(shown)) for condition in conditions]
    return image_grid(
        cells,
        columns=len(conditions),
        row_labels=[prompt[:48] for prompt in shown],
        column_labels=list(labels),
        min_cell=96,
    )


def _panels(count: int):
    plt = _pyplot()
    columns = min(4, count)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for axis in list(axes.flat)[count:]:
        axis.axis("off")
    return figure, list(axes.flat)[:count]


def percentile_sweep(report: dict, directions: Mapping[str, bool], caption: str):
    """Mean score against the input percentile, one panel per metric, the base model dotted."""
    names = list(report["percentile_sweep"])
    figure, axes = _panels(len(names))
    for axis, name in zip(axes, names):
        sweep = report["percentile_sweep"][name]
        axis.plot(sweep["percentiles"], sweep["mean_scores"], marker="o")
        axis.axhline(sweep["base_mean"], color="red", linestyle=":", label="base model")
        better = "higher" if directions[name] else "lower"
        target = " (target)" if name in report["target_metrics"] else ""
        axis.set_title(f"{name}{target}\nrho={sweep['spearman']:+.2f}, {better} better", fontsize=8)
        axis.set_xlabel("input percentile", fontsize=7)
        axis.tick_params(labelsize=7)
    figure.suptitle(caption, fontsize=8)
    figure.tight_layout()
    return figure


def relgain_bars(report: dict, caption: str):
    """RelGain at p99, p1 and p99 with negative guidance, per metric."""
    labels = {name: f"{name}*" if name in report["target_metrics"] else name for name in report["percentile_sweep"]}
    series = [("p99", report["relgain"]["p99"]), ("p1", report["relgain"]["p1"])]
    if "negative_guidance" in report:
        series.append(("p99 + negative guidance", report["negative_guidance"]["relgain"]))
    figure = grouped_bars(
        {label: {labels[name]: values[name] for name in labels} for label, values in series},
        f"RelGain against the base model (* = conditioning metric)\n{caption}",
        "RelGain vs base (%), + = better",
        zero_line=True,
    )
    largest = max(
        (abs(values[name]) for _, values in series for name in labels if np.isfinite(values[name])), default=0.0
    )
    if largest > 100:  # one metric's hundreds of percent would flatten the others' bars: linear within +-10 %
        axis = figure.axes[0]
        axis.set_yscale("symlog", linthresh=10)
        axis.set_ylim(*(limit * 3 for limit in axis.get_ylim()))
        axis.set_ylabel("RelGain (%), + = better\n(log scale beyond +-10 %)", fontsize=8)
    return figure


def scale_sweep(report: dict, caption: str):
    """Mean score against the adapter scale, at p99 and p1, one panel per metric."""
    names = list(report["scale_sweep"])
    figure, axes = _panels(len(names))
    for axis, name in zip(axes, names):
        sweep = report["scale_sweep"][name]
        axis.plot(sweep["scales"], sweep["mean_scores"], marker="o", label="p99")
        axis.plot(sweep["scales"], sweep["mean_scores_low"], marker="o", linestyle="--", label="p1")
        axis.axhline(report["percentile_sweep"][name]["base_mean"], color="red", linestyle=":")
        axis.set_title(name, fontsize=8)
        axis.set_xlabel("adapter scale lambda", fontsize=7)
        axis.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    figure.suptitle(caption, fontsize=8)
    figure.tight_layout()
    return figure


def heatmap(
    values: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    *,
    centre: float | None = None,
    fmt: str = "{:+.1f}",
    colour_label: str = "",
    marked: np.ndarray | None = None,
):
    """A labelled heatmap with the value in every cell; ``centre`` makes a diverging map around it; cells where
    ``marked`` is true get a ``*`` after their value."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(4.0, 0.75 * len(columns) + 2.5), max(2.5, 0.5 * len(rows) + 1.6)))
    finite = values[np.isfinite(values)]
    if centre is not None and finite.size:
        spread = max(float(np.abs(finite - centre).max()), 1e-12)
        image = axis.imshow(values, cmap="RdYlGn", vmin=centre - spread, vmax=centre + spread, aspect="auto")
    else:
        image = axis.imshow(values, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=35, ha="right", fontsize=8)
    axis.set_yticks(range(len(rows)), rows, fontsize=8)
    for row in range(len(rows)):
        for column in range(len(columns)):
            if np.isfinite(values[row, column]):
                red, green, blue, _ = image.cmap(image.norm(values[row, column]))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                mark = "*" if marked is not None and marked[row, column] else ""
                axis.text(
                    column,
                    row,
                    fmt.format(values[row, column]) + mark,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                    fontweight="bold" if mark else "normal",
                )
    figure.colorbar(image, ax=axis, label=colour_label)
    axis.set_title(title, fontsize=8)
    figure.tight_layout()
    return figure


def grouped_bars(
    groups: Mapping[str, Mapping[str, float]],
    title: str,
    ylabel: str,
    limits: tuple[float, float] | None = None,
    zero_line: bool = False,
):
    """Bars of ``{series: {category: value}}``, categories (of every series, in order) on the x axis."""
    plt = _pyplot()
    series = list(groups)
    categories = list(dict.fromkeys(category for values in groups.values() for category in values))
    figure, axis = plt.subplots(figsize=(max(5, 0.9 * len(categories) + 1) + 1.6, 3.4))
    width = 0.8 / len(series)
    positions = np.arange(len(categories))
    for offset, name in enumerate(series):
        axis.bar(
            positions + (offset - (len(series) - 1) / 2) * width,
            [groups[name].get(category, np.nan) for category in categories],
            width,
            label=name,
        )
    if zero_line:
        axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(positions, categories, rotation=30, ha="right", fontsize=8)
    axis.set_ylabel(ylabel, fontsize=8)
    if limits is not None:
        axis.set_ylim(*limits)
    axis.set_title(title, fontsize=8)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside, never on, bars
    figure.tight_layout()
    return figure


def preference_figures(
    rates: Mapping, conditions: Sequence[str], title: str, bradley_terry: Mapping | None = None
) -> dict:
    """The figures of a side-by-side study (:func:`~iqa_adapter.evaluation.preference.win_rates` results ``rates``
    over ``conditions``): ``win_rates`` (overall win rate and mean share of votes, the paper's Figure 3b),
    ``pairwise`` (row's win rate over the column, 3c) and, with ``bradley_terry`` (``{condition: {score, low,
    high}}``, the interval optional), ``bradley_terry``."""
    made = {
        "win_rates": grouped_bars(
            {
                "overall win rate": {c: rates["win_rate"][c] for c in conditions},
                "mean share of votes": {c: rates["vote_share"][c] for c in conditions},
            },
            f"{title}: overall results",
            "share",
            limits=(0, 1),
        )
    }
    matrix = np.array(
        [[rates["pairwise"].get(a, {}).get(b, np.nan) if a != b else np.nan for b in conditions] for a in conditions]
    )
    made["pairwise"] = heatmap(
        matrix,
        list(conditions),
        list(conditions),
        f"{title}: pairwise win rate of the row over the column (draws make up the rest)",
        fmt="{:.2f}",
        colour_label="win rate",
    )
    if bradley_terry:
        plt = _pyplot()
        figure, axis = plt.subplots(figsize=(max(4, 0.9 * len(conditions) + 1.5), 3.2))
        scores = np.array([bradley_terry[c]["score"] for c in conditions])
        if all("low" in bradley_terry[c] for c in conditions):
            low = np.array([bradley_terry[c]["low"] for c in conditions])
            high = np.array([bradley_terry[c]["high"] for c in conditions])
            axis.errorbar(range(len(conditions)), scores, yerr=np.maximum([scores - low, high - scores], 0), fmt="o",
                          capsize=4)  # fmt: skip
            subtitle = "95 % bootstrap intervals over participants"
        else:
            axis.plot(range(len(conditions)), scores, "o")
            subtitle = "point estimates"
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set_xticks(range(len(conditions)), conditions, rotation=30, ha="right", fontsize=8)
        axis.set_ylabel("Bradley-Terry log-strength", fontsize=8)
        axis.set_title(f"{title}: Bradley-Terry scores, {subtitle}", fontsize=8)
        figure.tight_layout()
        made["bradley_terry"] = figure
    return made
