"""The paper's whole evaluation of one or several IQA-Adapters against one base model, at the paper's scale.

:func:`evaluate` generates the images of an :class:`~iqa_adapter.evaluation.plan.EvaluationPlan` (the base model
once, then every adapter's percentile sweep, scale sweep and negative guidance), scores them with every quality
metric, measures fidelity (Frechet distance to the base model's images and to a reference set, and its top-k %
quality subsets; CLIP-T and CLIP-I), prompt following (GenEval's tasks, when the prompts carry GenEval metadata)
and the distances between quality levels, and writes ``report.json``, ``report.md`` and ``figures/``. Every step
is a resumable, shareable pass (:mod:`~iqa_adapter.evaluation.passes`): a killed evaluation started again with
the same command loses only unfinished chunks, ``accelerate launch`` shares the work between processes, and
metrics or measures added later are computed without generating again.
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..adapter import IQAAdapter
from ..chunks import process_state
from ..io_utils import atomic_write, write_json
from . import figures
from .distances import MeanMatrix, PairDistance, ms_ssim_scales, pair_distances
from .passes import (
    ChunkedPass,
    ScoreColumn,
    by_size,
    generate_images,
    generation_pass,
    hash_of,
    load_images,
    progress_bar,
    read_pass,
    read_scores,
    require_images,
    run_image_pass,
    score_images,
)
from .plan import BASE, HIGH, LOW, PERCENTILES, SCALES, EvaluationPlan, Item, plan_conditions
from .quality import ORIENTATION, quality_report, relgain_matrix

FOLLOWING_PERCENTILES = (LOW, 50, HIGH)  # prompt following is measured at these percentiles (and base, negative)


@dataclass
class EvaluationSettings:
    """How the images are made: seeds ``seed .. seed + seeds - 1`` per prompt and condition, paired everywhere."""

    seeds: int = 4
    seed: int = 0
    steps: int = 35
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    percentiles: Sequence[int] = PERCENTILES
    scales: Sequence[float] = SCALES
    negative_quality: float | None = 1.0
    scale: float | None = None  # lambda of the percentile sweep and negative guidance; None: each adapter's default
    relgain_only: Sequence[str] = ()  # adapters generated at p1 and p99 only (rows of the RelGain matrix)
    batch_size: int = 16
    chunk_size: int = 64


@dataclass
class Measures:
    """What is measured beside the quality metrics (each one optional)."""

    extractors: Sequence[str] = ()  # feature extractors of the Frechet distance ("dinov2", "clip", ...)
    reference: str | None = None  # real images (any dataset annotate reads) for the Frechet distance
    reference_resize: int | None = None  # square side the reference images are resized to before the extractor
    reference_subsets: Sequence[float] = ()  # top-k % quality subsets of the reference (paper: 25, 10)
    subset_metrics: Sequence[str] = ()  # NR metrics whose mean ranks the reference images for the subsets
    reference_cache: Path | None = None  # where reference statistics and scores are cached
    clip_model: str | None = None  # CLIP-T and CLIP-I with this CLIP (hub id or folder)
    prompt_following: bool = True  # GenEval's tasks, when the prompts carry GenEval metadata
    detector: str | None = None  # the open-vocabulary detector of prompt following (default: the scorer's)
    following_clip: str | None = None  # the CLIP of prompt following's colours (default: the scorer's)
    # another prompt-following scorer (the toy world's readers): ``score(images, metadata)`` gives, per image, a
    # result ``{"tag", "correct"}`` or a list of them (one per task), ``describe()`` a JSON-ready dict
    following_scorer: object | None = None
    distances: Sequence[str] = ("ssim", "ms_ssim")  # pair distances between percentiles, plus features:<extractor>
    # named groups of metric columns ({"learned": [...], "classical": [...]}): a mean column each in the RelGain
    # matrix, beside the mean over every metric
    metric_groups: dict[str, Sequence[str]] = field(default_factory=dict)


def named_measure(entry: str) -> tuple[str, str]:
    """``(name, spec)`` of a measure entry ``SPEC`` or ``NAME=SPEC``: report keys, folders and figures use the name
    (``loda=features:loda:checkpoints/loda:cls`` keeps a path out of them), the spec builds the measure."""
    name, equals, spec = entry.partition("=")
    if equals and re.fullmatch(r"[A-Za-z0-9_.-]+", name.strip()) and spec.strip():
        return name.strip(), spec.strip()
    return entry, entry


def _check_measures(measures: Measures) -> None:
    """Extractor and distance specs checked before any work (a typo must not cost the generation)."""
    from .distances import check_distance_spec
    from .features import parse_extractor_spec

    for entries, check, what in (
        (measures.extractors, parse_extractor_spec, "feature extractors"),
        (measures.distances, check_distance_spec, "distances"),
    ):
        names = [named_measure(entry)[0] for entry in entries]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"{what} are listed twice: {', '.join(repeated)} (give each a NAME=SPEC of its own)")
        for entry in entries:
            check(named_measure(entry)[1])


def _folder_name(spec: str) -> str:
    """A file-system name for a spec such as ``dinov2:facebook/dinov2-large``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_")


def _versions() -> dict:
    import diffusers
    import transformers

    from .. import __version__

    return {
        "iqa_adapter": __version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def adapter_identity(adapter: IQAAdapter) -> dict:
    """What an adapter's images depend on: its config and the size of its weights (not hashed: SDXL's are 700 MB)."""
    weights = adapter.source_directory / "adapter.safetensors" if adapter.source_directory else None
    return {
        "config": hash_of(adapter.config.to_dict()),
        "weights_bytes": weights.stat().st_size if weights and weights.is_file() else None,
    }


@dataclass
class EvaluationRun:
    """An evaluation's output folder, plan and process state, shared by its passes."""

    out_dir: Path
    plan: EvaluationPlan
    settings: EvaluationSettings
    state: object
    progress: bool = True
    prompt_records: list = field(default_factory=list)

    def pass_options(self) -> dict:
        return {"chunk_size": self.settings.chunk_size, "state": self.state, "progress": self.progress}

    def items_where(self, keep: Callable[[Item], bool]) -> list[int]:
        return [index for index in range(len(self.plan)) if keep(self.plan.item(index))]


def evaluate(
    out_dir: str | Path,
    *,
    load_pipeline: Callable[[], object],
    base_name: str,
    adapters: dict[str, IQAAdapter],
    metrics: Sequence[ScoreColumn],
    prompts: Sequence,
    settings: EvaluationSettings | None = None,
    measures: Measures | None = None,
    skip_generation: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict | None:
    """Run the whole evaluation into ``out_dir`` (see the module); the report on the main process, else None.

    ``load_pipeline()`` is called only when images are missing. ``adapters`` maps a report name to a score
    adapter; ``prompts`` are strings or :class:`~iqa_adapter.evaluation.prompts.Prompt` records (GenEval metadata
    and COCO image paths ride along). ``skip_generation`` refuses to generate: every image must exist already.
    """
    started = time.perf_counter()
    settings = settings or EvaluationSettings()
    measures = measures or Measures()
    if not adapters:
        raise ValueError("give at least one adapter to evaluate")
    if any(adapter.config.condition != "scores" for adapter in adapters.values()):
        raise ValueError(
            "evaluate compares adapters conditioned on quality scores; reference-based adapters are "
            "evaluated by the demo's reference-transfer experiment"
        )
    _check_measures(measures)
    columns = [column.name for column in metrics]
    for group, members in measures.metric_groups.items():
        if not members or set(members) - set(columns):
            raise ValueError(
                f"metric group {group!r} must name scored metric columns ({', '.join(columns)}), got {list(members)}"
            )
    out_dir = Path(out_dir)
    state = process_state(device)
    scales = {
        name: settings.scale if settings.scale is not None else adapter.config.default_scale
        for name, adapter in adapters.items()
    }
    sampling = {
        "steps": settings.steps,
        "guidance": settings.guidance,
        "height": settings.height,
        "width": settings.width,
    }
    plan = EvaluationPlan(
        plan_conditions(
            scales, settings.percentiles, settings.scales, settings.negative_quality, settings.relgain_only
        ),
        [getattr(prompt, "text", prompt) for prompt in prompts],
        list(range(settings.seed, settings.seed + settings.seeds)),
        settings={
            "sampling": sampling,
            "base": base_name,
            "adapters": {name: adapter_identity(adapter) for name, adapter in adapters.items()},
        },
    )
    run = EvaluationRun(out_dir, plan, settings, state, progress, list(prompts))
    if state.is_main_process:
        write_json(
            out_dir / "prompts.json",
            [asdict(prompt) if hasattr(prompt, "__dataclass_fields__") else {"text": prompt} for prompt in prompts],
        )

    generation = generation_pass(out_dir, plan, settings.chunk_size, state)
    if skip_generation or not generation.missing():
        require_images(out_dir, plan, settings.chunk_size, state)
    else:
        generate_images(
            out_dir,
            plan,
            load_pipeline(),
            adapters,
            batch_size=settings.batch_size,
            chunk_size=settings.chunk_size,
            state=state,
            progress=progress,
        )
    score_images(out_dir, plan, metrics, **run.pass_options())
    for entry in measures.extractors:
        _feature_pass(run, *named_measure(entry), device)
    if measures.clip_model:
        _clip_pass(run, measures.clip_model, device)
    if measures.prompt_following and (measures.following_scorer is not None or _following_metadata(run)):
        _following_pass(run, measures, device)
    for entry in measures.distances:
        _distance_pass(run, adapters, *named_measure(entry), device)
    if not state.is_main_process:
        return None
    report = build_report(run, adapters, metrics, measures, device)
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out_dir / "report.json", report)
    from .report import report_markdown

    atomic_write(out_dir / "report.md", lambda path: Path(path).write_text(report_markdown(report)))
    return report


# ---------------------------------------------------------------- measurement passes


def _fidelity_item(run: EvaluationRun) -> Callable[[Item], bool]:
    """Fidelity is measured on the base model, the percentile sweeps and negative guidance (not the scale sweep)."""
    return lambda item: run.plan.conditions[item.condition].kind != "scale"


def _feature_pass(run: EvaluationRun, name: str, spec: str, device) -> ChunkedPass:
    from .features import create_extractor

    extractor = create_extractor(spec, device=device)

    def measure(items: list[Item], images: list[torch.Tensor]) -> pd.DataFrame:
        features = np.zeros((len(items), extractor.feature_dim), dtype=np.float32)
        for positions, batch in by_size(images):
            features[positions] = extractor(batch).cpu().numpy()
        return pd.DataFrame({"item": [item.index for item in items], "features": list(features)})

    return run_image_pass(
        run.out_dir,
        run.plan,
        f"features/{_folder_name(name)}",
        {"extractor": extractor.describe()},
        _fidelity_item(run),
        measure,
        description=f"features ({name})",
        **run.pass_options(),
    )


def _clip_pass(run: EvaluationRun, model: str, device) -> ChunkedPass:
    from .fidelity import ClipScorer

    scorer = ClipScorer(model, device=device)
    references = {index: getattr(prompt, "image", None) for index, prompt in enumerate(run.prompt_records)}

    def measure(items: list[Item], images: list[torch.Tensor]) -> pd.DataFrame:
        clip_t = np.zeros(len(items), dtype=np.float32)
        clip_i = np.full(len(items), np.nan, dtype=np.float32)
        for positions, batch in by_size(images):
            clip_t[positions] = (
                scorer.text_image(batch, [run.plan.prompts[items[p].prompt] for p in positions]).cpu().numpy()
            )
        with_reference = [p for p, item in enumerate(items) if references.get(item.prompt)]
        if with_reference:
            from ..images import open_image, rgb_tensor

            real = [rgb_tensor(open_image(references[items[p].prompt])) for p in with_reference]
            for p, image, reference in zip(with_reference, [images[p] for p in with_reference], real):
                clip_i[p] = float(scorer.image_image(image[None], reference[None])[0])
        return pd.DataFrame({"item": [item.index for item in items], "clip_t": clip_t, "clip_i": clip_i})

    return run_image_pass(
        run.out_dir,
        run.plan,
        "clip",
        {"clip": model},
        _fidelity_item(run),
        measure,
        description="CLIP-T/I",
        **run.pass_options(),
    )


def _prompt_metadata(run: EvaluationRun) -> list[dict]:
    return [getattr(prompt, "metadata", None) or {} for prompt in run.prompt_records]


def _following_metadata(run: EvaluationRun) -> list[dict]:
    """GenEval metadata of every prompt (empty when no prompt carries any)."""
    metadata = _prompt_metadata(run)
    return metadata if any("tag" in entry for entry in metadata) else []


def _following_item(run: EvaluationRun) -> Callable[[Item], bool]:
    def keep(item: Item) -> bool:
        condition = run.plan.conditions[item.condition]
        return condition.kind in ("base", "negative") or (
            condition.kind == "percentile" and condition.percentile in FOLLOWING_PERCENTILES
        )

    return keep


def _following_pass(run: EvaluationRun, measures: Measures, device) -> ChunkedPass:
    scorer = measures.following_scorer
    if scorer is None:
        from .prompt_following import GenEvalScorer

        options = {
            key: value for key, value in (("detector", measures.detector), ("clip", measures.following_clip)) if value
        }
        scorer = GenEvalScorer(device=device or "cpu", **options)
    metadata = _prompt_metadata(run)

    def measure(items: list[Item], images: list[torch.Tensor]) -> pd.DataFrame:
        rows = []
        for item, results in zip(items, scorer.score(images, [metadata[item.prompt] for item in items])):
            for result in results if isinstance(results, list) else [results]:
                rows.append(
                    {
                        "item": item.index,
                        "prompt": item.prompt,
                        "tag": result["tag"],
                        "correct": bool(result["correct"]),
                    }
                )
        return pd.DataFrame(rows, columns=["item", "prompt", "tag", "correct"])

    return run_image_pass(
        run.out_dir,
        run.plan,
        "prompt_following",
        {"scorer": scorer.describe()},
        _following_item(run),
        measure,
        description="prompt following",
        **run.pass_options(),
    )


def _sweep_conditions(plan: EvaluationPlan, adapter: str) -> list[int]:
    return [index for index, c in enumerate(plan.conditions) if c.adapter == adapter and c.kind == "percentile"]


def _distance_folder(run: EvaluationRun, name: str) -> Path:
    return run.out_dir / "distances" / _folder_name(name)


def _distance_pass(run: EvaluationRun, adapters: dict[str, IQAAdapter], name: str, spec: str, device) -> ChunkedPass:
    """One pair distance between the percentiles of each (adapter, prompt, seed) group, in chunks of groups, in a
    folder of its own (``distances/<measure>/``), so that adding a measure later leaves the others as they are."""
    plan, options = run.plan, run.pass_options()
    distance = PairDistance(spec, device or "cpu")
    adapter_names = list(adapters)
    identity = generation_pass(run.out_dir, plan, options["chunk_size"], run.state).parameters
    job = ChunkedPass(
        _distance_folder(run, name),
        {"measure": spec, "images": hash_of(identity), "chunk_size": options["chunk_size"]},
        len(adapter_names) * plan.per_condition,
        options["chunk_size"],
        ".parquet",
        run.state,
    )
    mine = job.my_chunks()
    with progress_bar(
        sum(len(job.items(chunk)) for chunk in mine), f"distances ({name})", run.state, run.progress
    ) as bar:
        for chunk in mine:
            rows = []
            for group in job.items(chunk):
                adapter, within = divmod(group, plan.per_condition)
                conditions = _sweep_conditions(plan, adapter_names[adapter])
                items = [plan.item(condition * plan.per_condition + within) for condition in conditions]
                row = {"group": group}
                for (a, b), value in pair_distances(load_images(run.out_dir, plan, items), distance).items():
                    row[f"{a}:{b}"] = value
                rows.append(row)
                bar.update(1)
            frame = pd.DataFrame(rows)
            atomic_write(job.chunk_path(chunk), lambda path, frame=frame: frame.to_parquet(path, index=False))
    run.state.wait_for_everyone()
    return job


# ---------------------------------------------------------------- the report


def build_report(
    run: EvaluationRun, adapters: dict[str, IQAAdapter], metrics: Sequence[ScoreColumn], measures: Measures, device
) -> dict:
    """Every number and figure of the evaluation, from what the passes wrote."""
    plan, out_dir = run.plan, run.out_dir
    scores = {column.name: read_scores(out_dir, plan, column.name) for column in metrics}
    directions = {column.name: column.metric.higher_is_better for column in metrics}
    reports = {
        name: quality_report(plan, name, adapter.metric_names, scores, directions) for name, adapter in adapters.items()
    }
    report: dict = {
        "orientation": ORIENTATION,
        "metrics": {
            column.name: {"higher_is_better": directions[column.name], "spec": column.spec} for column in metrics
        },
        "settings": {
            **asdict(run.settings),
            "prompts": len(plan.prompts),
            "seeds_list": plan.seeds,
            "base": plan.settings["base"],
            "adapters": {name: str(a.source_directory or "") for name, a in adapters.items()},
            "conditions": [asdict(condition) for condition in plan.conditions],
        },
        "versions": _versions(),
        "n_images": len(plan),
        "n_prompts": len(plan.prompts),
        "adapters": reports,
        "relgain_matrix": relgain_matrix(reports, groups=measures.metric_groups),
    }
    if len(reports) == 1:  # one adapter: its experiments at the top level, as the paper's tables
        report.update(next(iter(reports.values())))
    report["frechet"], report["frechet_sets"] = {}, {}
    for entry in measures.extractors:
        name, spec = named_measure(entry)
        report["frechet"][name], report["frechet_sets"][name] = _frechet(run, name, spec, measures, device)
    if measures.clip_model:
        report["clip_t"], report["clip_i"] = _clip_means(run)
    if (out_dir / "prompt_following").is_dir():
        report["prompt_following"], report["prompt_following_counts"] = _following_summary(run)
    report["distances_by_adapter"] = _distances(run, adapters, measures)
    if len(adapters) == 1:
        report["distances"] = next(iter(report["distances_by_adapter"].values()))
    report["figures"] = _figures(run, report, adapters, directions)
    _write_image_table(run, scores)
    return report


def _write_image_table(run: EvaluationRun, scores: dict[str, np.ndarray]) -> None:
    """``images/images.csv``: every image's file, condition, prompt, seed and scores."""
    plan = run.plan
    items = [plan.item(index) for index in range(len(plan))]
    table = pd.DataFrame(
        {
            "file": [plan.image_path(item).as_posix() for item in items],
            "condition": [plan.conditions[item.condition].name for item in items],
            "prompt_index": [item.prompt for item in items],
            "prompt": [plan.prompts[item.prompt] for item in items],
            "seed": [item.seed for item in items],
            **{f"score_{name}": values for name, values in scores.items()},
        }
    )
    atomic_write(run.out_dir / "images" / "images.csv", lambda path: table.to_csv(path, index=False))


def _by_condition(plan: EvaluationPlan, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A pass's rows grouped by condition name."""
    conditions = frame["item"].astype(int).to_numpy() // plan.per_condition
    return {plan.conditions[index].name: frame[conditions == index] for index in np.unique(conditions)}


def _frechet(run: EvaluationRun, name: str, spec: str, measures: Measures, device) -> tuple[dict, dict]:
    """Per measured condition, its Frechet distance to the base model's images (``base``) and to the reference set
    and its subsets (``reference_all``, ``reference_top25``, ...); and what the distances were computed on."""
    from .features import create_extractor
    from .fidelity import FrechetStatistics, frechet_distance, reference_statistics

    statistics: dict[str, FrechetStatistics] = {}
    for path in sorted((run.out_dir / "features" / _folder_name(name)).glob("chunk_*.parquet")):
        frame = pd.read_parquet(path)
        if len(frame):
            for condition, rows in _by_condition(run.plan, frame).items():
                features = torch.from_numpy(np.stack(rows["features"].to_numpy()).astype(np.float64))
                statistics.setdefault(condition, FrechetStatistics()).update(features)
    targets = {} if BASE not in statistics else {"base": statistics[BASE]}
    about: dict = {"extractor": spec, "images_per_condition": run.plan.per_condition}
    if measures.reference:
        extractor = create_extractor(spec, device=device)
        references = reference_statistics(
            measures.reference,
            extractor,
            _reference_cache(run, measures),
            subsets=_reference_subsets(run, measures),
            resize=measures.reference_resize,
            progress=run.progress,
        )
        about["reference"] = {
            "data": measures.reference,
            "images": {subset: stats.count for subset, stats in references.items()},
        }
        targets.update((f"reference_{subset}", stats) for subset, stats in references.items())
    distances = {
        condition: {
            target: frechet_distance(stats, reference)
            for target, reference in targets.items()
            if not (condition == BASE and target == "base")
        }
        for condition, stats in statistics.items()
    }
    return distances, about


def _reference_cache(run: EvaluationRun, measures: Measures) -> Path:
    return Path(measures.reference_cache) if measures.reference_cache else run.out_dir / "reference"


def _reference_subsets(run: EvaluationRun, measures: Measures) -> dict[str, set[str]] | None:
    """The top-k % quality subsets of the reference set, ranked by the mean of ``subset_metrics``."""
    if not measures.reference_subsets:
        return None
    if not measures.subset_metrics:
        raise ValueError(
            "--reference-quality-subsets needs --subset-metrics (the NR metrics that rank the reference images)"
        )
    from ..annotate import ScoreTable, annotate, metric_columns
    from ..metrics import metric_info
    from .fidelity import top_quality_subsets

    scores_dir = (
        _reference_cache(run, measures) / f"scores_{hash_of([measures.reference, list(measures.subset_metrics)])}"
    )
    annotate(
        measures.reference,
        list(measures.subset_metrics),
        scores_dir,
        resize=measures.reference_resize,
        num_workers=0,
        progress=run.progress,
    )
    columns = metric_columns(list(measures.subset_metrics))
    return top_quality_subsets(
        ScoreTable.load(scores_dir),
        list(columns),
        list(measures.reference_subsets),
        {column: metric_info(name).higher_is_better for column, name in columns.items()},
    )


def _clip_means(run: EvaluationRun) -> tuple[dict, dict]:
    frame = read_pass(run.out_dir, "clip")
    grouped = _by_condition(run.plan, frame)
    clip_t = {name: float(rows["clip_t"].mean()) for name, rows in grouped.items()}
    clip_i = {name: float(rows["clip_i"].mean()) for name, rows in grouped.items() if rows["clip_i"].notna().any()}
    return clip_t, clip_i


def _following_summary(run: EvaluationRun) -> dict:
    from .prompt_following import summarize

    frame = read_pass(run.out_dir, "prompt_following")
    summaries = {
        name: summarize(rows[["tag", "prompt", "correct"]].to_dict("records"))
        for name, rows in _by_condition(run.plan, frame).items()
    }
    return (
        {
            name: {
                **{task: values["accuracy"] for task, values in summary["tasks"].items()},
                "overall": summary["overall"],
            }
            for name, summary in summaries.items()
        },
        {
            name: {key: value for key, value in summary.items() if key != "overall"}
            for name, summary in summaries.items()
        },
    )


def _distances(run: EvaluationRun, adapters: dict[str, IQAAdapter], measures: Measures) -> dict:
    """Per adapter and measure, the mean distance between the images of each pair of percentiles (streamed over the
    distance pass's chunk files)."""
    plan = run.plan
    adapter_names = list(adapters)
    sizes = [len(_sweep_conditions(plan, name)) for name in adapter_names]
    names = [named_measure(entry)[0] for entry in measures.distances]
    means = [{name: MeanMatrix(size) for name in names} for size in sizes]
    for name in names:
        for path in sorted(_distance_folder(run, name).glob("chunk_*.parquet")):
            for row in pd.read_parquet(path).to_dict("records"):
                adapter = int(row.pop("group")) // plan.per_condition
                for key, value in row.items():
                    a, b = key.split(":")
                    means[adapter][name].add(int(a), int(b), value)
    result = {}
    for adapter_index, adapter in enumerate(adapter_names):
        percentiles = [plan.conditions[index].percentile for index in _sweep_conditions(plan, adapter)]
        result[adapter] = {}
        for name, mean in means[adapter_index].items():
            matrix = mean.matrix()
            result[adapter][name] = {
                f"p{pa}": {f"p{pb}": float(matrix[i, j]) for j, pb in enumerate(percentiles)}
                for i, pa in enumerate(percentiles)
            }
        if "ms_ssim" in [spec for _, spec in map(named_measure, measures.distances)]:
            side = min(load_images(run.out_dir, plan, [plan.item(0)])[0].shape[-2:])
            result[adapter]["ms_ssim_scales"] = ms_ssim_scales(side)
    return result


def _figures(run: EvaluationRun, report: dict, adapters: dict[str, IQAAdapter], directions: dict[str, bool]) -> dict:
    plan, out_dir = run.plan, run.out_dir
    folder = out_dir / "figures"
    count = f"{len(plan.prompts)} prompts x {len(plan.seeds)} seeds per condition"
    paths: dict[str, str] = {}

    def image(condition: str, prompt: int):
        from PIL import Image

        return Image.open(out_dir / plan.image_path(plan.item(plan.items_of(condition)[prompt * len(plan.seeds)])))

    for name, quality in report["adapters"].items():
        prefix = "" if len(adapters) == 1 else f"{name}_"
        percentiles = quality["percentile_sweep"][next(iter(directions))]["percentiles"]
        conditions = [BASE] + [f"{name}/p{p}" for p in percentiles]
        grid = figures.condition_grid(image, conditions, ["base"] + [f"p{p}" for p in percentiles], plan.prompts)
        paths[f"{prefix}percentile_grid"] = figures.save_png(grid, folder / f"{prefix}percentile_grid.png", out_dir)
        caption = f"adapter {name}; {count}"
        paths[f"{prefix}percentile_sweep"] = figures.save_png(
            figures.percentile_sweep(quality, directions, caption), folder / f"{prefix}percentile_sweep.png", out_dir
        )
        paths[f"{prefix}relgain"] = figures.save_png(
            figures.relgain_bars(quality, caption), folder / f"{prefix}relgain.png", out_dir
        )
        paths[f"{prefix}scale_sweep"] = figures.save_png(
            figures.scale_sweep(quality, caption), folder / f"{prefix}scale_sweep.png", out_dir
        )
        for measure, matrix in report["distances_by_adapter"].get(name, {}).items():
            if not isinstance(matrix, dict):
                continue
            labels = list(matrix)
            values = np.array([[matrix[a][b] for b in labels] for a in labels])
            figure = figures.heatmap(
                values,
                labels,
                labels,
                f"mean {measure} distance between percentiles, adapter {name}\n{count}",
                fmt="{:.3f}",
                colour_label="distance",
            )
            key = f"{prefix}distances_{_folder_name(measure)}"
            paths[key] = figures.save_png(figure, folder / f"{key}.png", out_dir)
    matrix = report["relgain_matrix"]
    columns = list(next(iter(matrix.values())))
    values = np.array([[matrix[adapter][column] for column in columns] for adapter in matrix])
    targets = np.array(
        [[column in report["adapters"][adapter]["target_metrics"] for column in columns] for adapter in matrix]
    )
    paths["relgain_matrix"] = figures.save_png(
        figures.heatmap(
            values,
            list(matrix),
            columns,
            f"RelGain at p99 against the base model (%, + = better; * = the adapter's conditioning metric)\n{count}",
            centre=0.0,
            colour_label="RelGain %",
            marked=targets,
        ),
        folder / "relgain_matrix.png",
        out_dir,
    )
    for name, frechet in report["frechet"].items():
        series: dict[str, dict] = {}
        for condition, targets in frechet.items():
            for target, value in targets.items():
                series.setdefault("to the base model" if target == "base" else "to " + target.replace("_", " "), {})[
                    condition
                ] = value
        if series:
            paths[f"frechet_{_folder_name(name)}"] = figures.save_png(
                figures.grouped_bars(
                    series, f"Frechet distance ({name} features), lower = closer\n{count}", "Frechet distance"
                ),
                folder / f"frechet_{_folder_name(name)}.png",
                out_dir,
            )
    if report.get("clip_t"):
        paths["clip"] = figures.save_png(
            figures.grouped_bars(
                {"CLIP-T": report["clip_t"], **({"CLIP-I": report["clip_i"]} if report.get("clip_i") else {})},
                f"CLIP-T (image-prompt) and CLIP-I (image-real image), cosine x 100\n{count}",
                "score",
            ),
            folder / "clip.png",
            out_dir,
        )
    if report.get("prompt_following"):
        paths["prompt_following"] = figures.save_png(
            figures.grouped_bars(
                report["prompt_following"],
                f"prompt following (GenEval's tasks, our detector), share correct\n{count}",
                "accuracy",
                limits=(0.0, 1.0),
            ),
            folder / "prompt_following.png",
            out_dir,
        )
    return paths
