"""The model card (``README.md`` with YAML front matter) that :meth:`IQAAdapter.push_to_hub` uploads beside an
adapter's ``config.json`` and ``adapter.safetensors``: what the adapter conditions on, the statistics that turn
a target into its input, how it was trained, how to use it and, when given, how it evaluated."""

from __future__ import annotations

import json
from collections.abc import Mapping

from .config import IQAAdapterConfig
from .hub import is_local

LIBRARY_NAME = "iqa-adapter"
TAGS = ("iqa-adapter", "image-quality", "text-to-image", "diffusers", "ip-adapter")
CARD_PERCENTILES = (1, 50, 99)


def _front_matter(config: IQAAdapterConfig, license: str | None) -> str:
    lines = ["---", f"library_name: {LIBRARY_NAME}", "pipeline_tag: text-to-image"]
    if license:
        lines.append(f"license: {license}")
    if _is_hub_id(config.base_model):
        lines.append(f"base_model: {config.base_model}")
    lines.append("tags:")
    lines += [f"- {tag}" for tag in TAGS]
    lines += [f"- metric:{name}" for name in config.metric_names if config.condition == "scores"]
    lines.append("---")
    return "\n".join(lines)


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not name.startswith(".") and not is_local(name) and name.count("/") == 1


def _base_model(config: IQAAdapterConfig) -> str:
    if _is_hub_id(config.base_model):
        return f"[{config.base_model}](https://huggingface.co/{config.base_model})"
    if config.base_model:
        return f"the base model it was trained beside (`{config.base_model}`, not on the Hub)"
    return "an unrecorded base model"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _statistics_table(config: IQAAdapterConfig) -> list[str]:
    header = "| metric | higher is better | mean | std | " + " | ".join(f"raw at p{p}" for p in CARD_PERCENTILES) + " |"
    rows = [header, "|" + "---|" * (4 + len(CARD_PERCENTILES))]
    for stats in config.metrics:
        values = []
        for percentile in CARD_PERCENTILES:
            try:
                values.append(_number(stats.raw_from_percentile(percentile)))
            except ValueError:
                values.append("")
        rows.append(
            f"| {stats.name} | {'yes' if stats.higher_is_better else 'no'} | {_number(stats.mean)} | "
            f"{_number(stats.std)} | " + " | ".join(values) + " |"
        )
    return rows


def _training_section(config: IQAAdapterConfig) -> list[str]:
    training = config.extra.get("training")
    if not training:
        return [
            "The config records no training recipe (an adapter converted from the official code, or saved "
            "before recipes were recorded)."
        ]
    rows = ["| setting | value |", "|---|---|"]
    rows += [
        f"| {key} | {json.dumps(value) if not isinstance(value, str) else value} |" for key, value in training.items()
    ]
    return rows


def _usage(config: IQAAdapterConfig, repo_id: str) -> list[str]:
    base = config.base_model if _is_hub_id(config.base_model) else "BASE_MODEL"
    if config.condition == "reference":
        condition = 'references=[Image.open("reference.png")]'
        options = "--reference reference.png"
    else:
        condition = "{" + ", ".join(f'"{name}": "p99"' for name in config.metric_names) + "}"
        options = " ".join(f"--quality {name}=p99" for name in config.metric_names)
    return [
        "```python",
        "import torch",
        "from diffusers import DiffusionPipeline",
        *(["from PIL import Image"] if config.condition == "reference" else []),
        "from iqa_adapter import IQAAdapter",
        "from iqa_adapter.generation import generate",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{base}", torch_dtype=torch.float16).to("cuda")',
        f'adapter = IQAAdapter.from_pretrained("{repo_id}")',
        f'results = generate(pipe, adapter, "a photo of a cat", {condition})',
        'results[0].image.save("cat.png")',
        "```",
        "",
        "```bash",
        f'iqa-adapter generate --base {base} --adapter {repo_id} --prompt "a photo of a cat" {options}',
        "```",
    ]


def _check_evaluation(evaluation) -> None:
    """Refuse, in one line, what is not an ``evaluate`` report: a JSON object whose ``relgain`` (when present)
    maps conditions to ``{metric: number}`` over the same metrics, with a list of ``target_metrics`` and a
    mapping of ``claims``."""
    problem = None
    if not isinstance(evaluation, Mapping):
        problem = f"it holds a {type(evaluation).__name__}, not a JSON object"
    else:
        relgain = evaluation.get("relgain") or {}
        tables = list(relgain.values()) if isinstance(relgain, Mapping) else None
        if tables is None or not all(isinstance(table, Mapping) for table in tables):
            problem = "its relgain is not a mapping of conditions to {metric: value}"
        elif any(list(table) != list(tables[0]) for table in tables) or not all(
            isinstance(value, int | float) for table in tables for value in table.values()
        ):
            problem = "its relgain tables do not give a number for the same metrics"
        elif not isinstance(evaluation.get("target_metrics", []), list):
            problem = "its target_metrics is not a list"
        elif not isinstance(evaluation.get("claims", {}), Mapping):
            problem = "its claims are not a mapping"
    if problem:
        raise ValueError(f"the evaluation report is not a report.json of `iqa-adapter evaluate`: {problem}")


def _evaluation_section(evaluation: Mapping) -> list[str]:
    relgain = evaluation.get("relgain")
    if not relgain:
        return ["(The evaluation report given has no RelGain table.)"]
    targets = set(evaluation.get("target_metrics", []))
    metrics = list(next(iter(relgain.values())))
    rows = [
        f"Relative gain over the base model, % (paper section 4.2; targets marked *), "
        f"{evaluation.get('n_images', '?')} images:",
        "",
        "| condition | " + " | ".join(f"{m}*" if m in targets else m for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    rows += [
        f"| {condition} | " + " | ".join(f"{values[m]:+.1f}" for m in metrics) + " |"
        for condition, values in relgain.items()
    ]
    claims = evaluation.get("claims")
    if claims:
        rows += [
            "",
            "Claims of the paper checked on these numbers: "
            + "; ".join(
                f"{name.replace('_', ' ')}: {'yes' if value else 'no'}"
                for name, value in claims.items()
                if value is not None
            )
            + ".",
        ]
    return rows


def adapter_model_card(
    config: IQAAdapterConfig, repo_id: str, *, evaluation: Mapping | None = None, license: str | None = None
) -> str:
    """The README.md of the hub repository ``repo_id`` holding an adapter with ``config``; ``evaluation`` is an
    ``iqa-adapter evaluate`` report (its ``report.json``) to summarise."""
    if config.condition == "reference":
        summary = (
            f"conditioned on the features of a reference image ({config.reference['metric']}, layers "
            f"{', '.join(map(str, config.reference['layers']))}): it transfers the reference's quality"
        )
    else:
        summary = f"conditioned on the quality scores {', '.join(config.metric_names)}"
    lines = [
        _front_matter(config, license),
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"An [IQA-Adapter](https://arxiv.org/abs/2412.01794) for {_base_model(config)}, "
        f"{summary}. It adds decoupled cross-attention K/V on {len(config.layers)} cross-attention layers and a "
        f"{config.projection} projection to {config.num_tokens} tokens; load it with the `iqa-adapter` library.",
        "",
        "## Targets and scale",
        "",
        f"Trained at adapter scale {config.train_scale:g}; generation uses {config.default_scale:g} unless told "
        "(the paper's). A target per metric is a percentile of the training data (`p99`: better than 99 % of "
        "it, whatever the metric's direction), a z-score (`z2.0`) or a raw metric value.",
    ]
    if config.default_targets:
        lines += [
            "",
            "Targets a call leaves out: "
            + ", ".join(f"{name} = {value}" for name, value in config.default_targets.items())
            + ".",
        ]
    if config.condition == "scores":
        lines += ["", "Statistics of the training data (they turn a target into the z-score the adapter reads):", ""]
        lines += _statistics_table(config)
    lines += ["", "## Training", ""] + _training_section(config)
    lines += ["", "## Usage", ""] + _usage(config, repo_id)
    if evaluation is not None:
        _check_evaluation(evaluation)
        lines += ["", "## Evaluation", ""] + _evaluation_section(evaluation)
    return "\n".join(lines) + "\n"
