"""The evaluation's ``report.md``: claims, then one table per experiment, each with the numbers behind it."""

from __future__ import annotations

import numpy as np


def _value(value: float, fmt: str = "{:+.2f}") -> str:
    return fmt.format(value) if value is not None and np.isfinite(value) else "n/a"


def quality_markdown(report: dict, title: str) -> list[str]:
    """One adapter's claims and quality tables."""
    names = list(report["percentile_sweep"])
    targets = report["target_metrics"]
    lines = [
        f"## {title}",
        "",
        f"Conditioning metrics: {', '.join(targets)}; default adapter scale {report['default_scale']:g}.",
        "",
        "### Claims of the paper, checked on this run",
        "",
    ]
    lines += [
        f"- {claim.replace('_', ' ')}: **{'yes' if value else 'no' if value is not None else 'n/a'}**"
        for claim, value in report["claims"].items()
    ]
    negative = report.get("negative_guidance")
    header = "| metric | p99 | p1 |" + (" p99 + negative guidance |" if negative else "") + " percentile Spearman |"
    lines += ["", "### RelGain against the base model (%)", "", header, "|" + "---|" * (header.count("|") - 1)]
    for name in names:
        cells = [
            f"{name}{' (target)' if name in targets else ''}",
            _value(report["relgain"]["p99"][name]),
            _value(report["relgain"]["p1"][name]),
        ]
        if negative:
            cells.append(_value(negative["relgain"][name]))
        cells.append(_value(report["percentile_sweep"][name]["spearman"], "{:+.3f}"))
        lines.append("| " + " | ".join(cells) + " |")
    sweep = report["percentile_sweep"][names[0]]["percentiles"]
    lines += [
        "",
        "### Mean score per input percentile",
        "",
        "| metric | base | " + " | ".join(f"p{p}" for p in sweep) + " |",
        "|---" * (len(sweep) + 2) + "|",
    ]
    for name in names:
        values = report["percentile_sweep"][name]
        lines.append(
            f"| {name} | {values['base_mean']:.4g} | " + " | ".join(f"{v:.4g}" for v in values["mean_scores"]) + " |"
        )
    scales = report["scale_sweep"][names[0]]["scales"]
    lines += [
        "",
        "### Mean score per adapter scale (p99 / p1)",
        "",
        "| metric | " + " | ".join(f"lambda={s:g}" for s in scales) + " |",
        "|---" * (len(scales) + 1) + "|",
    ]
    for name in names:
        values = report["scale_sweep"][name]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{hi:.4g} / {lo:.4g}" for hi, lo in zip(values["mean_scores"], values["mean_scores_low"]))
            + " |"
        )
    return lines + [""]


def _table(rows: dict[str, dict], columns: list[str], fmt: str) -> list[str]:
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(_value(values.get(column), fmt) for column in columns) + " |")
    return lines


def report_markdown(report: dict) -> str:
    """The whole report as a Markdown page."""
    settings = report["settings"]
    lines = [
        "# IQA-Adapter evaluation",
        "",
        f"{report['n_images']} images: {report['n_prompts']} prompts x {settings['seeds']} seeds per condition, "
        f"{settings['steps']} steps, CFG {settings['guidance']:g}; base model `{settings['base']}`. "
        f"{report['orientation']}. {report.get('seconds', '?')} s.",
        "",
    ]
    for name, quality in report["adapters"].items():
        lines += quality_markdown(quality, f"Adapter `{name}`")
    matrix = report["relgain_matrix"]
    if len(matrix) > 1:
        columns = list(next(iter(matrix.values())))
        lines += ["## RelGain matrix at p99 (%, rows adapters, columns metrics)", ""]
        lines += _table(matrix, columns, "{:+.2f}") + [""]
    for spec, frechet in report.get("frechet", {}).items():
        about = report["frechet_sets"][spec]
        lines += [
            f"## Frechet distance ({spec} features)",
            "",
            f"{about['images_per_condition']} generated images per condition"
            + (
                f"; reference `{about['reference']['data']}` ({about['reference']['images']} images)"
                if "reference" in about
                else ""
            )
            + ".",
            "",
        ]
        targets = list(dict.fromkeys(target for values in frechet.values() for target in values))
        lines += _table(frechet, targets, "{:.4g}") + [""]
    if report.get("clip_t"):
        lines += ["## CLIP-T and CLIP-I (cosine x 100)", ""]
        lines += _table(
            {
                name: {"CLIP-T": value, "CLIP-I": report.get("clip_i", {}).get(name)}
                for name, value in report["clip_t"].items()
            },
            ["CLIP-T", "CLIP-I"],
            "{:.2f}",
        ) + [""]
    if report.get("prompt_following"):
        tasks = list(next(iter(report["prompt_following"].values())))
        lines += [
            "## Prompt following (GenEval's tasks with this project's detector: compare rows, not with "
            "GenEval's published numbers)",
            "",
        ]
        lines += _table(report["prompt_following"], tasks, "{:.3f}") + [""]
    for adapter, measures in report.get("distances_by_adapter", {}).items():
        for measure, matrix in measures.items():
            if not isinstance(matrix, dict):
                continue
            labels = list(matrix)
            lines += [f"## Mean {measure} distance between percentiles (adapter `{adapter}`)", ""]
            lines += _table(matrix, labels, "{:.4f}") + [""]
    lines += ["Figures: " + ", ".join(f"`{path}`" for path in report.get("figures", {}).values()), ""]
    return "\n".join(lines)
