"""Score an image-text dataset with several quality metrics in one resumable, distributed pass.

:func:`annotate` reads and decodes every image once (in data-loader workers), resizes it, and scores each
batch with all the metrics. The dataset is cut into chunks of ``chunk_size`` samples in reading order, and
each finished chunk is written atomically to ``out_dir/chunks/chunk_NNNNNN.parquet``: a run killed at any
point and started again with the same command redoes only the unfinished chunks. Under ``accelerate
launch`` the unfinished chunks are dealt out to the processes in turn (``out_dir`` must be on a file system
that all of them see), and the main process merges the chunk files once every process is done. With
``through_vae`` the metrics score each image as a diffusion model's VAE reproduces it, not the image itself.
``out_dir`` then holds:

* ``scores.parquet``: ``key, caption, width, height`` (original size), then one float32 column per metric;
* ``stats.csv``: statistics of each metric over its finite scores, in the layout of ``CC3M_stats.csv``;
* ``skipped.csv``: ``key, source, reason`` for every sample that could not be scored (unreadable, corrupt,
  truncated, no image, duplicate key) and for every NaN or infinite score (such scores stay in
  ``scores.parquet`` but are left out of the statistics);
* ``job.json``: the job's parameters; a restart with other parameters is refused.

:class:`ScoreTable` loads ``scores.parquet`` for look-ups by sample key.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Callable, KeysView, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .chunks import (
    ChunkBatches,
    ChunkCollector,
    ItemLoader,
    JobMismatchError,
    WorkItem,
    count_samples,
    my_unfinished_chunks,
    process_state,
    start_or_resume,
)
from .datasets import RESIZE_MODES, DecodedImage, ImageTextReader, load_image, open_dataset
from .images import DEFAULT_MAX_PIXELS
from .io_utils import atomic_write
from .metrics import QualityMetric, create_metric, metric_info
from .pipelines import load_vae, vae_factor, vae_round_trip
from .stats import MetricStats, write_stats_table

JOB_FILE = "job.json"
CHUNKS_DIR = "chunks"
SCORES_FILE = "scores.parquet"
STATS_FILE = "stats.csv"
SKIPPED_FILE = "skipped.csv"
INFO_COLUMNS = ("key", "caption", "width", "height")
REPORT_COLUMNS = ("key", "source", "reason")
PIXELS_PER_CALL = 2**24
"""Most pixels handed to a metric at once (images of one size are scored in slices of at most this many)."""


__all__ = ["AnnotationSummary", "JobMismatchError", "ScoreTable", "annotate"]


@dataclass(frozen=True)
class AnnotationSummary:
    """What a finished annotation job produced."""

    out_dir: Path
    scored: int
    skipped: int
    invalid_scores: dict[str, int]
    without_statistics: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [
            f"scored {self.scored} images into {self.out_dir / SCORES_FILE}; skipped {self.skipped} "
            f"(reasons in {self.out_dir / SKIPPED_FILE})"
        ]
        lines += [
            f"  {name}: {count} NaN or infinite scores, left out of the statistics (listed in {SKIPPED_FILE})"
            for name, count in self.invalid_scores.items()
            if count
        ]
        lines += [f"  {name}: fewer than 2 finite scores, no statistics" for name in self.without_statistics]
        return "\n".join(lines)


def annotate(
    data: str,
    metrics: Sequence[str],
    out_dir: str | Path,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    resize: int | None = 512,
    device: str | torch.device | None = None,
    chunk_size: int = 1000,
    metric_options: dict[str, dict] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    resize_mode: str = "pil-bicubic",
    through_vae: str | None = None,
    progress: bool = True,
) -> AnnotationSummary | None:
    """Score every image of ``data`` with ``metrics`` and write the outputs described in this module to ``out_dir``.

    Args:
        data: the dataset (see :func:`iqa_adapter.datasets.open_dataset`): a folder of images with ``.txt``
            captions or a ``captions.jsonl``/``.csv``, a listing file, ``.tar`` shards (a path, a glob or
            ``shards/{00000..00009}.tar``) or ``.parquet`` files.
        metrics: metric names of the registry (``iqa-adapter metrics`` lists them), each the name of its score
            column, or ``column=name`` to give the column another name (``loda=loda:checkpoints/loda``,
            ``topiq=pyiqa:topiq_nr``).
        out_dir: output folder; running again with the same arguments resumes an interrupted job.
        batch_size: images per scoring batch.
        num_workers: data-loader processes that read and decode images (0 decodes in this process).
        resize: every image is resized to ``resize`` x ``resize`` pixels (bicubic), as the IQA-Adapter paper
            scored CC3M at 512x512; ``None`` keeps the native size, and images of different sizes in a batch
            are then scored in separate calls.
        device: device of the metrics; ``None`` takes the device accelerate gives this process.
        chunk_size: samples per chunk, the unit of work that is saved, resumed and shared between processes.
        metric_options: keyword arguments per metric (by column name), passed to
            :func:`iqa_adapter.metrics.create_metric`.
        resize_mode: ``pil-bicubic`` (default) or ``tensor-bilinear``, the official scoring's resize
            (:data:`iqa_adapter.datasets.RESIZE_MODES`).
        max_pixels: images with more pixels are skipped (listed in ``skipped.csv``) without being decoded;
            ``None`` reads any size. Scoring needs about 16 bytes per pixel of the largest image beside the
            decoded batch.
        through_vae: score each image as this model's VAE reproduces it (encoded to the posterior mean, decoded):
            the quality that a latent diffusion model on that VAE can learn to make. A diffusers pipeline folder
            or hub id (its ``vae/``) or a VAE folder; images whose sides are not multiples of the VAE's
            downsampling factor are skipped. ``None`` (default, as the paper) scores the images themselves.
        progress: show a progress bar (images/s) and print a summary, on the main process.

    Returns:
        The summary on the main process, ``None`` on the others.
    """
    metrics = list(metrics)
    metric_options = dict(metric_options or {})
    columns = metric_columns(metrics)
    _check_arguments(
        columns,
        metric_options,
        batch_size=batch_size,
        chunk_size=chunk_size,
        resize=resize,
        max_pixels=max_pixels,
        resize_mode=resize_mode,
    )
    out_dir = Path(out_dir)
    reader = open_dataset(data)
    state = process_state(device)
    device = torch.device(device) if device is not None else state.device
    # built before the job is recorded: a metric that cannot be built (NIQE without params) leaves no job behind
    models = {
        column: create_metric(name, device=device, **metric_options.get(column, {})).eval()
        for column, name in columns.items()
    }
    vae = None if through_vae is None else load_vae(through_vae, device)
    parameters = {
        "data": str(Path(data).expanduser().absolute()),
        "metrics": metrics,
        "resize": resize,
        "chunk_size": chunk_size,
        "metric_options": metric_options,
    }
    # settings added after the first version are recorded when they differ from their defaults, so that older
    # jobs resume
    if max_pixels != DEFAULT_MAX_PIXELS:
        parameters["max_pixels"] = max_pixels
    if resize_mode != "pil-bicubic":
        parameters["resize_mode"] = resize_mode
    if through_vae is not None:
        parameters["through_vae"] = str(Path(through_vae).absolute()) if Path(through_vae).exists() else through_vae
    num_samples = start_or_resume(
        out_dir / JOB_FILE,
        json.loads(json.dumps(parameters)),
        functools.partial(count_samples, reader, data),
        state,
        partial_files=out_dir / CHUNKS_DIR,
    )
    num_chunks, mine = my_unfinished_chunks(num_samples, chunk_size, functools.partial(_chunk_path, out_dir), state)

    show = progress and state.is_main_process
    total = sum(min(chunk_size, num_samples - index * chunk_size) for index in mine)
    with tqdm(total=total, unit="img", desc="annotate", disable=not show, dynamic_ncols=True) as bar:
        _score_chunks(
            reader,
            mine,
            models,
            out_dir,
            chunk_size=chunk_size,
            batch_size=batch_size,
            num_workers=num_workers,
            resize=resize,
            max_pixels=max_pixels,
            resize_mode=resize_mode,
            device=device,
            vae=vae,
            on_batch=bar.update,
        )
    state.wait_for_everyone()  # every chunk file is written
    if not state.is_main_process:
        return None
    summary = _merge(out_dir, num_chunks, {name: model.higher_is_better for name, model in models.items()})
    if show:
        print(summary)
    return summary


# ---------------------------------------------------------------- set-up


def metric_columns(metrics: Sequence[str]) -> dict[str, str]:
    """``{score column: registry name}`` from ``name`` or ``column=name`` entries."""
    columns: dict[str, str] = {}
    for entry in metrics:
        column, _, name = entry.rpartition("=") if "=" in entry else (entry, "", entry)
        column, name = column.strip(), name.strip()
        if not column or not name:
            raise ValueError(f"metric entries are NAME or COLUMN=NAME, got {entry!r}")
        if column in columns:
            raise ValueError(f"metrics are listed twice: {column}")
        columns[column] = name
    return columns


def _check_arguments(
    columns: dict[str, str],
    metric_options: dict,
    *,
    batch_size: int,
    chunk_size: int,
    resize: int | None,
    max_pixels: int | None,
    resize_mode: str,
) -> None:
    if not columns:
        raise ValueError("give at least one metric (`iqa-adapter metrics` lists them)")
    reserved = sorted(set(columns) & {*INFO_COLUMNS, *REPORT_COLUMNS})
    if reserved:
        raise ValueError(f"metric names {reserved} clash with the output columns {INFO_COLUMNS + REPORT_COLUMNS[1:]}")
    for name in columns.values():
        metric_info(name)  # raises, listing the known metrics, for an unknown name
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}")
    unknown = sorted(set(metric_options) - set(columns))
    if unknown:
        raise ValueError(f"metric_options name metrics that are not scored: {', '.join(unknown)}")
    for name, value in {
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "resize": resize,
        "max_pixels": max_pixels,
    }.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")


def _chunk_path(out_dir: Path, index: int) -> Path:
    return out_dir / CHUNKS_DIR / f"chunk_{index:06d}.parquet"


# ---------------------------------------------------------------- scoring


ImageGroup = tuple[list[tuple[WorkItem, DecodedImage]], torch.Tensor | None]


def collate_by_size(pairs: list[tuple[WorkItem, DecodedImage]]) -> list[ImageGroup]:
    """Collate: stack the images of equal size and type into (N, 3, H, W) (uint8, or float32 for 16-bit
    images); skipped samples form a group without images."""
    groups: dict[tuple | None, list] = defaultdict(list)
    for item, decoded in pairs:
        image = decoded.image
        groups[None if image is None else (tuple(image.shape), image.dtype)].append((item, decoded))
    return [
        (
            [(item, replace(decoded, image=None)) for item, decoded in group],
            None if size is None else torch.stack([decoded.image for _, decoded in group]),
        )
        for size, group in groups.items()
    ]


def _score_chunks(
    reader: ImageTextReader,
    chunks: Sequence[int],
    models: dict[str, QualityMetric],
    out_dir: Path,
    *,
    chunk_size: int,
    batch_size: int,
    num_workers: int,
    resize: int | None,
    max_pixels: int | None,
    resize_mode: str,
    device: torch.device,
    vae: AutoencoderKL | None,
    on_batch: Callable[[int], object],
) -> None:
    """Score the given chunks, writing each chunk's file as soon as all its samples are in."""
    loader = DataLoader(
        ItemLoader(functools.partial(load_image, resize=resize, max_pixels=max_pixels, resize_mode=resize_mode)),
        batch_sampler=ChunkBatches(reader, chunks, chunk_size, batch_size),
        num_workers=num_workers,
        collate_fn=collate_by_size,
    )
    metrics = list(models)

    def write_chunk(chunk: int, rows: list[dict]) -> None:
        frame = _chunk_frame(rows, metrics)
        atomic_write(_chunk_path(out_dir, chunk), lambda temporary: frame.to_parquet(temporary, index=False))

    writer = ChunkCollector(write_chunk)
    for groups in loader:
        for pairs, images in groups:
            scores, reasons = (
                ({}, [None] * len(pairs))
                if images is None
                else _score(models, images, device, [item.sample.key for item, _ in pairs], vae)
            )
            for row, (item, decoded) in enumerate(pairs):
                writer.add(
                    item,
                    {
                        "key": item.sample.key,
                        "caption": item.sample.caption,
                        "width": decoded.width,
                        "height": decoded.height,
                        **{name: values[row] for name, values in scores.items()},
                        "source": item.sample.source,
                        "reason": decoded.reason or reasons[row],
                    },
                )
            on_batch(len(pairs))


def _too_small(models: dict[str, QualityMetric], height: int, width: int) -> str | None:
    """Why images of this size cannot be scored by every metric, or None."""
    for name, model in models.items():
        min_height, min_width = model.min_size
        if height < min_height or width < min_width:
            return (
                f"image of {width}x{height} pixels (after --resize) is smaller than the {min_width}x{min_height} "
                f"that {name} needs"
            )
    return None


def _off_vae_grid(vae: AutoencoderKL | None, height: int, width: int) -> str | None:
    """Why images of this size cannot go through ``vae`` (sides not multiples of its factor), or None."""
    factor = 1 if vae is None else vae_factor(vae)
    if height % factor or width % factor:
        return (
            f"image of {width}x{height} pixels (after --resize) cannot go through the VAE, whose sides must be "
            f"multiples of {factor}"
        )
    return None


def _score(
    models: dict[str, QualityMetric],
    images: torch.Tensor,
    device: torch.device,
    keys: list[str],
    vae: AutoencoderKL | None = None,
) -> tuple[dict[str, np.ndarray], list[str | None]]:
    """Scores of images (N, 3, H, W) of one size (uint8, or float in [0, 1]) with every metric, and for each image
    the reason it was not scored (None when it was). With ``vae``, the metrics score the images' round trips through
    it (:func:`~iqa_adapter.pipelines.vae_round_trip`).

    Images too small for a metric are not scored. The images go to the metrics in slices of at most
    :data:`PIXELS_PER_CALL` pixels, so that memory stays bounded for large native-size images. A metric that
    fails on a slice with a ValueError (data it cannot score) is retried image by image and only the images it
    fails on are skipped; other errors stop the job.
    """
    count, height, width = len(keys), images.shape[-2], images.shape[-1]
    reasons: list[str | None] = [_too_small(models, height, width) or _off_vae_grid(vae, height, width)] * count
    scores = {name: np.full(count, np.nan, dtype=np.float32) for name in models}
    if reasons[0] is not None:
        return scores, reasons
    step = max(1, PIXELS_PER_CALL // (height * width))
    for start in range(0, count, step):
        part = images[start : start + step].to(device)
        batch = part.float().div_(255) if part.dtype == torch.uint8 else part.float()
        if vae is not None:
            batch = vae_round_trip(vae, batch)
        for name, model in models.items():
            values, failures = _metric_scores(name, model, batch, keys[start : start + step])
            scores[name][start : start + len(batch)] = values
            for row, failure in enumerate(failures, start):
                reasons[row] = reasons[row] or failure
    for row, reason in enumerate(reasons):
        if reason is not None:
            for values in scores.values():
                values[row] = np.nan
    return scores, reasons


def _metric_scores(
    name: str, model: QualityMetric, batch: torch.Tensor, keys: list[str]
) -> tuple[np.ndarray, list[str | None]]:
    """One metric's scores of a batch, and for each image why it could not be scored (None when it was).

    A ValueError (data the metric cannot score) is narrowed down image by image; other errors stop the job.
    """
    try:
        values = model.score(batch).cpu().numpy()
    except ValueError as error:
        if len(batch) == 1:
            return np.full(1, np.nan, dtype=np.float32), [f"{name} cannot score it: {error}"]
        parts = [_metric_scores(name, model, batch[row : row + 1], keys[row : row + 1]) for row in range(len(batch))]
        return np.concatenate([values for values, _ in parts]), [reason for _, (reason,) in parts]
    except Exception as error:
        raise RuntimeError(f"metric {name!r} failed on the images {', '.join(keys[:5])}: {error}") from error
    if values.shape != (len(keys),):
        raise RuntimeError(f"metric {name!r} returned {values.shape[0]} scores for {len(keys)} images")
    return values, [None] * len(keys)


def _chunk_frame(rows: list[dict], metrics: list[str]) -> pd.DataFrame:
    """A chunk's rows: the columns of ``scores.parquet``, then ``source`` and ``reason`` (set for skipped samples)."""
    dtypes = {
        "key": "string",
        "caption": "string",
        "width": "Int64",
        "height": "Int64",
        **dict.fromkeys(metrics, "float32"),
        "source": "string",
        "reason": "string",
    }
    return pd.DataFrame(rows, columns=list(dtypes)).astype(dtypes)


# ---------------------------------------------------------------- merging


def _merge(out_dir: Path, num_chunks: int, higher_is_better: dict[str, bool]) -> AnnotationSummary:
    """Merge the chunk files into ``scores.parquet``, ``skipped.csv`` and ``stats.csv``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [_chunk_path(out_dir, index) for index in range(num_chunks)]
    missing = [path.name for path in paths if not path.exists()]
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {num_chunks} chunk files are missing (first: {missing[0]}); run the "
            "same command again to finish them"
        )
    metrics = list(higher_is_better)
    schema = pa.schema(
        [
            ("key", pa.string()),
            ("caption", pa.string()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            *[(name, pa.float32()) for name in metrics],
        ]
    )
    scores: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    problems: list[pd.DataFrame] = []
    seen_keys: set[str] = set()

    def write_scores(temporary: str) -> None:
        with pq.ParquetWriter(temporary, schema) as writer:
            for path in paths:
                scored, chunk_problems = _split_chunk(pd.read_parquet(path), metrics, seen_keys)
                writer.write_table(pa.Table.from_pandas(scored[schema.names], schema=schema, preserve_index=False))
                problems.extend(chunk_problems)
                for name in metrics:
                    scores[name].append(scored[name].to_numpy(np.float32))

    atomic_write(out_dir / SCORES_FILE, write_scores)
    skipped = pd.concat(problems, ignore_index=True)
    atomic_write(out_dir / SKIPPED_FILE, lambda temporary: skipped.to_csv(temporary, index=False))

    values = {name: np.concatenate(scores[name]) for name in metrics}
    finite = {name: int(np.isfinite(values[name]).sum()) for name in metrics}
    stats = [
        MetricStats.from_scores(name, values[name], higher_is_better[name]) for name in metrics if finite[name] >= 2
    ]
    atomic_write(out_dir / STATS_FILE, lambda temporary: write_stats_table(stats, temporary))

    invalid = {name: len(values[name]) - finite[name] for name in metrics}
    scored_count = len(values[metrics[0]])
    return AnnotationSummary(
        out_dir,
        scored=scored_count,
        skipped=len(skipped) - sum(invalid.values()),
        invalid_scores=invalid,
        without_statistics=tuple(name for name in metrics if finite[name] < 2),
    )


def _split_chunk(
    frame: pd.DataFrame, metrics: list[str], seen_keys: set[str]
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """The scored rows of a chunk (first occurrence of each key), and the rows to report in ``skipped.csv``."""
    unreadable = frame["reason"].notna()
    scored = frame[~unreadable]
    duplicate = scored["key"].duplicated() | scored["key"].isin(seen_keys)
    problems = [
        frame.loc[unreadable, list(REPORT_COLUMNS)],
        scored.loc[duplicate, ["key", "source"]].assign(reason="duplicate key: an earlier sample has this key"),
    ]
    scored = scored[~duplicate]
    seen_keys.update(scored["key"])
    for name in metrics:
        invalid = scored.loc[~np.isfinite(scored[name].to_numpy(np.float32)), ["key", "source", name]]
        reasons = [
            f"{name} score is {value}: kept in {SCORES_FILE}, left out of the statistics" for value in invalid[name]
        ]
        problems.append(invalid[["key", "source"]].assign(reason=reasons))
    return scored, problems


# ---------------------------------------------------------------- look-ups


class ScoreTable:
    """Metric scores by sample key, held in a dict: a look-up is O(1), never a scan.

    ``table[key]`` gives ``{metric: score}``; ``table.vector(key)`` the float32 scores in ``table.metrics``
    order; ``key in table`` and ``len(table)`` work as for a dict.
    """

    def __init__(self, keys: Sequence[str], metrics: Sequence[str], values: np.ndarray):
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (len(keys), len(metrics)):
            raise ValueError(
                f"values must have shape ({len(keys)}, {len(metrics)}) for {len(keys)} keys and "
                f"{len(metrics)} metrics, got {values.shape}"
            )
        self.metrics = tuple(metrics)
        self._values = values
        self._rows = {key: row for row, key in enumerate(keys)}
        if len(self._rows) != len(keys):
            raise ValueError("keys must be unique")

    @classmethod
    def load(cls, path: str | Path) -> ScoreTable:
        """Load ``scores.parquet`` (or the annotation folder holding it)."""
        import pyarrow.parquet as pq

        path = Path(path)
        if path.is_dir():
            path = path / SCORES_FILE
        metrics = [name for name in pq.read_schema(path).names if name not in INFO_COLUMNS]
        frame = pd.read_parquet(path, columns=["key", *metrics])
        return cls(frame["key"].astype(str).tolist(), metrics, frame[metrics].to_numpy(np.float32))

    def __getitem__(self, key: str) -> dict[str, float]:
        return dict(zip(self.metrics, self.vector(key).tolist()))

    def vector(self, key: str) -> np.ndarray:
        """The scores of ``key`` as a float32 array in ``self.metrics`` order."""
        return self._values[self._rows[key]]

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def keys(self) -> KeysView[str]:
        return self._rows.keys()
