"""Paired low/high-quality images from one prompt and initial noise: IQA-Adapter as a degradation model.

:func:`make_pairs` generates, for every prompt and seed (a *group*), the high-quality image at the ``high``
targets and one degraded image per :class:`LowLevel` from the same initial noise: lower quality targets for the
score adapter, or a degraded reference image whose quality a reference-based adapter transfers. Every pair is
scored with every metric column (at least every metric the adapter is conditioned on) and judged by the
:class:`~iqa_adapter.pairs.filter.ContentFilter`; kept pairs are written in the chosen layout
(:mod:`~iqa_adapter.pairs.writers`), and every pair, kept or not, goes to ``index.csv`` with its reasons.

The work is cut into chunks of ``chunk_size`` groups (:class:`~iqa_adapter.evaluation.passes.ChunkedPass`):
images go to disk as each chunk is done (memory holds one chunk's images whatever the number of pairs; only the
index rows, a few hundred bytes a pair, are gathered at the end), a killed run started again with the same
settings redoes only the chunks without an ``index/chunk_N.parquet`` file (and writes the same bytes), a restart
with other settings is refused, and under ``accelerate launch`` every process takes its share.
``pairs.json`` sums it up: pairs made and kept, and why pairs were dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..adapter import IQAAdapter
from ..chunks import process_state
from ..evaluation.passes import (
    AdapterSwitch,
    ChunkedPass,
    ScoreColumn,
    hash_of,
    progress_bar,
    score_tensors,
)
from ..generation import generate
from ..images import rgb_tensor
from ..io_utils import atomic_write, write_json
from ..targets import QualityTarget
from ..validation import check_int, check_number, check_seed
from .filter import ContentFilter, degradation
from .writers import LAYOUTS, PairRecord, PairWriter

INDEX_DIR = "index"
INDEX_FILE = "index.csv"
SUMMARY_FILE = "pairs.json"


@dataclass(frozen=True)
class LowLevel:
    """One degraded version of every high-quality image: quality targets for the score adapter (the high targets
    with these replaced), or a degraded ``reference`` image whose quality the reference adapter transfers."""

    name: str
    quality: Mapping[str, QualityTarget] | None = None
    reference: Image.Image | None = field(default=None, compare=False)

    def identity(self) -> dict:
        """What the level's images depend on (a reference image by a digest of its pixels)."""
        if self.reference is None:
            return {"name": self.name, "quality": {key: str(value) for key, value in self.quality.items()}}
        pixels = np.ascontiguousarray(np.asarray(self.reference.convert("RGB")))
        return {
            "name": self.name,
            "reference": hashlib.sha256(pixels.tobytes()).hexdigest()[:16],
            "size": list(self.reference.size),
        }


def quality_levels(low: Mapping[str, Sequence[QualityTarget]]) -> list[LowLevel]:
    """Levels from a list of targets per metric (``{"loda": ["p1", "p10"], "niqe": ["p1"]}``): the i-th level takes
    each metric's i-th target; a metric with one target has it in every level."""
    counts = {len(targets) for targets in low.values()} - {1}
    if any(len(targets) == 0 for targets in low.values()) or len(counts) > 1:
        listed = ", ".join(f"{metric}: {len(targets)}" for metric, targets in low.items())
        raise ValueError(f"every --low metric needs the same number of levels, or one for all ({listed})")
    count = max(counts, default=1)
    levels = []
    for index in range(count):
        quality = {metric: targets[index if len(targets) > 1 else 0] for metric, targets in low.items()}
        levels.append(LowLevel(",".join(f"{metric}={target}" for metric, target in quality.items()), quality))
    return levels


def reference_levels(references: Mapping[str, Image.Image]) -> list[LowLevel]:
    """One level per named degraded reference image."""
    return [LowLevel(name, reference=image) for name, image in references.items()]


@dataclass
class PairSettings:
    """How pairs are made and written: seeds ``seed .. seed + seeds - 1`` per prompt, the same for every level."""

    seeds: int = 1
    seed: int = 0
    steps: int = 35
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    scale: float | None = None  # adapter scale of both images (None: each adapter's default)
    negative_quality: float | None = None  # negative quality guidance (score adapter)
    batch_size: int = 16
    chunk_size: int = 16  # prompt x seed groups per resumable chunk
    layout: str = "folder"  # or "webdataset"
    save_dropped: bool = False  # dropped pairs too, under dropped/

    def __post_init__(self) -> None:
        check_int("seeds", self.seeds, 1)
        check_seed("seed", self.seed)
        check_int("batch_size", self.batch_size, 1)
        check_int("chunk_size", self.chunk_size, 1)
        if self.scale is not None:
            check_number("scale", self.scale, 0.0)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")


def _quality_order_z(adapter: IQAAdapter, targets: Mapping[str, QualityTarget]) -> dict[str, float]:
    """Each metric's target as a z-score oriented so that higher is better quality."""
    z = adapter.z_scores(targets).tolist()
    return {stats.name: value if stats.higher_is_better else -value for stats, value in zip(adapter.config.metrics, z)}


def check_request(
    adapter: IQAAdapter,
    high: Mapping[str, QualityTarget],
    levels: Sequence[LowLevel],
    columns: Iterable[str],
    reference_adapter: IQAAdapter | None = None,
    out_dir: str | Path | None = None,
) -> None:
    """Every check :func:`make_pairs` makes before generating (the command line makes them before loading a model):
    the adapters' kinds, known metrics and targets, each level's lowered targets below ``high``, a score column per
    conditioning metric among the score ``columns``, an output folder that is not a file."""
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"output folder {out_dir} is a file; choose another --out")
    if adapter.config.condition != "scores":
        raise ValueError(
            "the high-quality images need an adapter conditioned on quality scores; give a reference-based "
            "adapter as reference_adapter (--reference-adapter)"
        )
    if not levels:
        raise ValueError("give at least one low level: --low METRIC=T1,T2,... or --reference-degraded IMAGE")
    names = [level.name for level in levels]
    if len(set(names)) != len(names):
        raise ValueError(f"low levels need distinct names, got {names}")
    best = _quality_order_z(adapter, high)
    for level in levels:
        if level.reference is None:
            _check_lowered(adapter, high, level, best)
        elif reference_adapter is None or reference_adapter.config.condition != "reference":
            raise ValueError(
                f"low level {level.name!r} is a degraded reference image: it needs a reference-based "
                "adapter (--reference-adapter DIR)"
            )
    missing = [name for name in adapter.metric_names if name not in set(columns)]
    if missing:
        raise ValueError(
            f"no score column for {', '.join(missing)}: every metric the adapter is conditioned on is "
            f"scored on both images (give --metrics {missing[0]}=<registry name>)"
        )


def _check_lowered(
    adapter: IQAAdapter, high: Mapping[str, QualityTarget], level: LowLevel, best: Mapping[str, float]
) -> None:
    low = _quality_order_z(adapter, {**high, **level.quality})
    for metric, target in level.quality.items():
        if not low[metric] < best[metric]:
            high_target = adapter.complete_targets(high)[metric]
            raise ValueError(
                f"--low {metric}={target} is not below --high {metric}={high_target} in quality; a "
                f"degraded version needs a lower quality target (e.g. {metric}=p1)"
            )


@dataclass
class PairJob:
    """What :func:`make_pairs` works on: the models, the groups (prompt x seed) and where it writes."""

    pipe: object
    adapters: AdapterSwitch
    prompts: list
    high: dict
    levels: list[LowLevel]
    metrics: list[ScoreColumn]
    content_filter: ContentFilter
    settings: PairSettings
    reference_encoder: object | None = None  # the reference adapter's, built once

    @property
    def seeds(self) -> list[int]:
        return list(range(self.settings.seed, self.settings.seed + self.settings.seeds))

    @property
    def num_groups(self) -> int:
        return len(self.prompts) * self.settings.seeds

    def group(self, index: int) -> tuple[int, int]:
        """(prompt index, seed) of a group: prompt-major, seeds inner."""
        prompt, seed_index = divmod(index, self.settings.seeds)
        return prompt, self.settings.seed + seed_index

    def identity(self, pipe_name: str | None) -> dict:
        """What the pairs depend on: a restart with anything else is refused."""
        from ..evaluation.run import adapter_identity

        settings = self.settings
        return {
            "prompts": hash_of([[_text(prompt), _metadata(prompt)] for prompt in self.prompts]),
            "num_prompts": len(self.prompts),
            "seeds": self.seeds,
            "high": self.high,
            "levels": [level.identity() for level in self.levels],
            "base": pipe_name,
            "adapters": {name: adapter_identity(adapter) for name, adapter in self.adapters.adapters.items()},
            "sampling": self.sampling(),
            "scale": settings.scale,
            "negative_quality": settings.negative_quality,
            "metrics": {column.name: column.spec for column in self.metrics},
            "filter": self.content_filter.describe(),
            "layout": settings.layout,
            "save_dropped": settings.save_dropped,
            "chunk_size": settings.chunk_size,
        }

    def sampling(self) -> dict:
        settings = self.settings
        return {
            "steps": settings.steps,
            "guidance": settings.guidance,
            "height": settings.height,
            "width": settings.width,
        }


def _text(prompt) -> str:
    return getattr(prompt, "text", prompt)


def _metadata(prompt) -> dict:
    return dict(getattr(prompt, "metadata", None) or {})


def _generate(job: PairJob, level: LowLevel | None, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
    """The images of one level (``None``: the high-quality ones) for these prompts and seeds."""
    settings = job.settings
    common = dict(seeds=seeds, scale=settings.scale, batch_size=settings.batch_size, progress=False, **job.sampling())
    if level is not None and level.reference is not None:
        adapter = job.adapters.use("reference")
        results = generate(
            job.pipe, adapter, prompts, references=[level.reference], reference_encoder=job.reference_encoder, **common
        )
    else:
        adapter = job.adapters.use("scores")
        quality = {**job.high, **(level.quality if level is not None else {})}
        results = generate(job.pipe, adapter, prompts, quality, negative_quality=settings.negative_quality, **common)
    return [result.image for result in results]


def _scores(job: PairJob, images: list[torch.Tensor]) -> dict[str, np.ndarray]:
    return {column.name: score_tensors(column.metric, images).astype(np.float64) for column in job.metrics}


def _at(values: Mapping[str, np.ndarray], position: int) -> dict[str, float | None]:
    """One pair's values, NaN as None (JSON has no NaN)."""
    return {name: float(array[position]) if np.isfinite(array[position]) else None for name, array in values.items()}


def _level_targets(job: PairJob, level: LowLevel) -> dict:
    if level.reference is not None:
        return {"reference": level.name}
    adapter = job.adapters.adapters["scores"]
    return {name: str(value) for name, value in adapter.complete_targets({**job.high, **level.quality}).items()}


@dataclass
class HighImages:
    """A chunk's groups and their high-quality images, shared by every level's pairs."""

    prompt_indices: list[int]
    seeds: list[int]
    texts: list[str]
    metadata: list[dict]
    images: list[Image.Image]
    pixels: torch.Tensor
    scores: dict[str, np.ndarray]
    targets: dict[str, str]


def _high_images(job: PairJob, groups: Sequence[int]) -> HighImages:
    prompt_indices, seeds = (list(values) for values in zip(*(job.group(index) for index in groups)))
    texts = [_text(job.prompts[index]) for index in prompt_indices]
    images = _generate(job, None, texts, seeds)
    pixels = [rgb_tensor(image) for image in images]
    targets = job.adapters.adapters["scores"].complete_targets(job.high)
    return HighImages(
        prompt_indices,
        seeds,
        texts,
        [_metadata(job.prompts[index]) for index in prompt_indices],
        images,
        torch.stack(pixels),
        _scores(job, pixels),
        {key: str(value) for key, value in targets.items()},
    )


def _level_records(job: PairJob, high: HighImages, level_index: int) -> list[PairRecord]:
    """One level's pairs of a chunk's groups: the degraded images generated, scored, measured and judged."""
    level = job.levels[level_index]
    images = _generate(job, level, high.texts, high.seeds)
    pixels = [rgb_tensor(image) for image in images]
    scores = _scores(job, pixels)
    values = job.content_filter.measure(high.pixels, torch.stack(pixels), high.texts, high.metadata)
    lowered = [stats for stats in job.adapters.adapters["scores"].config.metrics if stats.name in (level.quality or {})]
    values["degradation"] = degradation(high.scores, scores, lowered)
    records = []
    for position, (prompt_index, seed) in enumerate(zip(high.prompt_indices, high.seeds)):
        reasons = job.content_filter.reasons({name: float(array[position]) for name, array in values.items()})
        name = f"{prompt_index:05d}_s{seed}_l{level_index}"
        info = {
            "name": name,
            "prompt_index": prompt_index,
            "prompt": high.texts[position],
            "seed": seed,
            "level": level.name,
            "targets": {"hq": high.targets, "lq": _level_targets(job, level)},
            "scores": {"hq": _at(high.scores, position), "lq": _at(scores, position)},
            "filter": _at(values, position),
            "kept": not reasons,
            "reasons": reasons,
        }
        records.append(PairRecord(name, high.images[position], images[position], info))
    return records


def make_chunk(job: PairJob, groups: Sequence[int]) -> list[PairRecord]:
    """Every pair of these groups, group by group and level by level within a group."""
    high = _high_images(job, groups)
    by_level = [_level_records(job, high, level_index) for level_index in range(len(job.levels))]
    return [record for group_records in zip(*by_level) for record in group_records]


def index_row(info: Mapping) -> dict:
    """A pair's line of ``index.csv``: flat columns (scores ``hq_<metric>`` and ``lq_<metric>``, filter values,
    targets as JSON)."""
    row = {key: info[key] for key in ("name", "prompt_index", "prompt", "seed", "level", "kept")}
    row["reasons"] = ";".join(info["reasons"])
    for part in ("hq", "lq"):
        row.update((f"{part}_{metric}", value) for metric, value in info["scores"][part].items())
    row.update(info["filter"])
    row.update((f"{part}_targets", json.dumps(info["targets"][part], sort_keys=True)) for part in ("hq", "lq"))
    return row


def make_pairs(
    pipe,
    adapter: IQAAdapter,
    prompts: Sequence,
    out_dir: str | Path,
    *,
    high: Mapping[str, QualityTarget],
    levels: Sequence[LowLevel],
    metrics: Sequence[ScoreColumn],
    reference_adapter: IQAAdapter | None = None,
    settings: PairSettings | None = None,
    content_filter: ContentFilter | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict | None:
    """Make, filter and write the pairs of every prompt x seed x low level into ``out_dir`` (see the module).

    ``pipe`` is the base diffusers pipeline, ``adapter`` the score adapter of the high-quality images (and of
    quality levels), ``reference_adapter`` a reference-based adapter for levels made from degraded reference
    images. ``prompts`` are strings or :class:`~iqa_adapter.evaluation.prompts.Prompt` records (their metadata goes
    to the filter's prompt-following scorer). ``metrics`` are the score columns, at least one per metric the
    adapter is conditioned on. Returns the summary (``pairs.json``) on the main process, else None.
    """
    settings = settings or PairSettings()
    content_filter = content_filter or ContentFilter(device=device)
    high, levels = dict(high), list(levels)
    if not prompts:
        raise ValueError("give at least one prompt")
    if content_filter.following_scorer is not None and not all(_metadata(prompt) for prompt in prompts):
        raise ValueError(
            "the prompt-following check reads each prompt's metadata: give Prompt records with metadata "
            "(e.g. the toy world's {'toy_scene': ...}), or no following_scorer"
        )
    check_request(adapter, high, levels, [column.name for column in metrics], reference_adapter, out_dir)
    out_dir = Path(out_dir)
    state = process_state(device)
    by_reference = any(level.reference is not None for level in levels)
    adapters = {"scores": adapter, **({"reference": reference_adapter} if by_reference else {})}
    job = PairJob(
        pipe,
        AdapterSwitch(pipe, adapters),
        list(prompts),
        high,
        levels,
        list(metrics),
        content_filter,
        settings,
        reference_adapter.reference_encoder(device) if by_reference else None,
    )
    chunks = ChunkedPass(
        out_dir / INDEX_DIR,
        job.identity(getattr(pipe.config, "_name_or_path", None)),
        job.num_groups,
        settings.chunk_size,
        ".parquet",
        state,
    )
    try:
        _make_chunks(job, chunks, PairWriter(out_dir, settings.layout, settings.save_dropped), progress)
    finally:
        job.adapters.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return write_summary(out_dir, job)


def _make_chunks(job: PairJob, chunks: ChunkedPass, writer: PairWriter, progress: bool) -> None:
    """This process's unfinished chunks: pairs written first, then the chunk's index file that marks it done."""
    mine = chunks.my_chunks()
    images_per_group = 1 + len(job.levels)
    total = sum(len(chunks.items(chunk)) for chunk in mine) * images_per_group
    with progress_bar(total, "pairs", chunks.state, progress) as bar:
        for chunk in mine:
            records = make_chunk(job, list(chunks.items(chunk)))
            writer.write(chunk, records)
            frame = pd.DataFrame([index_row(record.info) for record in records])
            atomic_write(chunks.chunk_path(chunk), lambda path, frame=frame: frame.to_parquet(path, index=False))
            bar.update(len(records) + len(chunks.items(chunk)))


def read_index(out_dir: str | Path) -> pd.DataFrame:
    """Every pair's row, in chunk order, from the finished chunks' files."""
    frames = [pd.read_parquet(path) for path in sorted((Path(out_dir) / INDEX_DIR).glob("chunk_*.parquet"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summarize(index: pd.DataFrame, metrics: Sequence[str]) -> dict:
    """Pairs made and kept (overall and per level), why pairs were dropped (a pair dropped for several reasons counts
    under each), and the mean score of every metric on the kept pairs' two images."""
    reasons = Counter(reason for text in index["reasons"] for reason in text.split(";") if reason)
    kept = index[index["kept"]]
    return {
        "made": len(index),
        "kept": int(index["kept"].sum()),
        "kept_share": float(index["kept"].mean()) if len(index) else float("nan"),
        "dropped": len(index) - int(index["kept"].sum()),
        "drop_reasons": dict(sorted(reasons.items())),
        "levels": {
            str(level): {"made": len(rows), "kept": int(rows["kept"].sum())}
            for level, rows in index.groupby("level", sort=False)
        },
        "kept_scores": {metric: {part: _mean(kept[f"{part}_{metric}"]) for part in ("hq", "lq")} for metric in metrics},
    }


def _mean(values: pd.Series) -> float | None:
    return float(values.mean()) if values.notna().any() else None


def write_summary(out_dir: Path, job: PairJob) -> dict:
    """``index.csv`` (every pair) and ``pairs.json`` (:func:`summarize` with the settings)."""
    index = read_index(out_dir)
    atomic_write(out_dir / INDEX_FILE, lambda path: index.to_csv(path, index=False))
    summary = {
        **summarize(index, [column.name for column in job.metrics]),
        "layout": job.settings.layout,
        "prompts": len(job.prompts),
        "seeds": job.seeds,
        "high": job.high,
        "low_levels": [level.identity() for level in job.levels],
        "filter": job.content_filter.describe(),
        "sampling": job.sampling(),
        "index": INDEX_FILE,
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary
