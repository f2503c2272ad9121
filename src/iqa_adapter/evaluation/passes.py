"""The evaluation's work, in resumable chunks of images, shared out between processes.

Every pass walks the plan's images (:class:`~iqa_adapter.evaluation.plan.EvaluationPlan`) in chunks of
``chunk_size`` items and writes one file per finished chunk into its own folder, beside a ``job.json`` that
records what the pass depends on: a pass killed at any point and started again redoes only the chunks
without a file, and a restart with other settings is refused (:mod:`iqa_adapter.chunks`). Under
``accelerate launch`` every process takes its share of the unfinished chunks.

* :func:`generate_images`: every image to ``images/<condition>/<prompt>_s<seed>.png`` as it is made (memory does
  not grow with the number of images); ``generation/chunk_N.json`` marks a finished chunk.
* :func:`score_images`: one folder per score column, ``scores/<column>/chunk_N.parquet``, so that a metric added
  later is computed alone, without generating or scoring anything again.
* :func:`run_image_pass`: the same walk for the other measures (features, CLIP, prompt following), which only
  look at some conditions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from ..adapter import IQAAdapter
from ..chunks import my_unfinished_chunks, start_or_resume
from ..generation import generate
from ..images import open_image, rgb_tensor
from ..io_utils import atomic_write, write_json
from ..metrics import QualityMetric, create_metric
from .plan import EvaluationPlan, Item

JOB_FILE = "job.json"
GENERATION_DIR = "generation"
SCORES_DIR = "scores"


@dataclass
class ChunkedPass:
    """One resumable pass over the plan's items: ``folder/job.json`` and one ``chunk_NNNNNN<suffix>`` per chunk."""

    folder: Path
    parameters: dict
    num_items: int
    chunk_size: int
    suffix: str
    state: PartialState

    @property
    def num_chunks(self) -> int:
        return -(-self.num_items // self.chunk_size)

    def chunk_path(self, chunk: int) -> Path:
        return self.folder / f"chunk_{chunk:06d}{self.suffix}"

    def items(self, chunk: int) -> range:
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.num_items))

    def my_chunks(self) -> list[int]:
        """Record or check the job, then the unfinished chunks this process does."""
        start_or_resume(
            self.folder / JOB_FILE,
            json.loads(json.dumps(self.parameters)),
            lambda: self.num_items,
            self.state,
            partial_files=self.folder,
        )
        return my_unfinished_chunks(self.num_items, self.chunk_size, self.chunk_path, self.state)[1]

    def missing(self) -> list[int]:
        """The chunks without a file (in any process)."""
        return [chunk for chunk in range(self.num_chunks) if not self.chunk_path(chunk).exists()]


def progress_bar(total: int, description: str, state: PartialState, progress: bool) -> tqdm:
    """A bar in images/s with ETA, on the main process only."""
    return tqdm(
        total=total, desc=description, unit="img", dynamic_ncols=True, disable=not (progress and state.is_main_process)
    )


# ---------------------------------------------------------------- generation


def generation_pass(out_dir: Path, plan: EvaluationPlan, chunk_size: int, state: PartialState) -> ChunkedPass:
    return ChunkedPass(
        out_dir / GENERATION_DIR, {**plan.identity(), "chunk_size": chunk_size}, len(plan), chunk_size, ".json", state
    )


def _runs(items: Sequence[Item]) -> Iterator[list[Item]]:
    """Consecutive items of the same condition."""
    run: list[Item] = []
    for item in items:
        if run and item.condition != run[0].condition:
            yield run
            run = []
        run.append(item)
    if run:
        yield run


class AdapterSwitch:
    """Keeps at most one of several adapters attached to a pipeline, switching only when needed."""

    def __init__(self, pipe, adapters: dict[str, IQAAdapter]):
        self.pipe, self.adapters, self.current = pipe, adapters, None

    def use(self, name: str | None) -> IQAAdapter | None:
        if name != self.current:
            if self.current is not None:
                self.adapters[self.current].detach()
            if name is not None:
                self.adapters[name].attach(self.pipe)
            self.current = name
        return None if name is None else self.adapters[name]

    def close(self) -> None:
        self.use(None)


def generate_images(
    out_dir: Path,
    plan: EvaluationPlan,
    pipe,
    adapters: dict[str, IQAAdapter],
    *,
    chunk_size: int,
    batch_size: int,
    state: PartialState,
    progress: bool = True,
) -> int:
    """Generate the plan's missing images (this process's share); returns how many this process made."""
    job = generation_pass(out_dir, plan, chunk_size, state)
    mine = job.my_chunks()
    sampling = plan.settings["sampling"]
    switch = AdapterSwitch(pipe, adapters)
    made = 0
    with progress_bar(sum(len(job.items(chunk)) for chunk in mine), "generate", state, progress) as bar:
        try:
            for chunk in mine:
                items = [plan.item(index) for index in job.items(chunk)]
                for run in _runs(items):
                    condition = plan.conditions[run[0].condition]
                    adapter = switch.use(condition.adapter)
                    quality = (
                        dict.fromkeys(adapter.metric_names, f"p{condition.percentile}") if adapter is not None else None
                    )
                    for start in range(0, len(run), batch_size):
                        batch = run[start : start + batch_size]
                        results = generate(
                            pipe,
                            adapter,
                            [plan.prompts[item.prompt] for item in batch],
                            quality,
                            seeds=[item.seed for item in batch],
                            scale=condition.scale if adapter else None,
                            negative_quality=condition.negative_quality,
                            batch_size=batch_size,
                            progress=False,
                            **sampling,
                        )
                        for item, result in zip(batch, results):
                            path = out_dir / plan.image_path(item)
                            atomic_write(
                                path, lambda temporary, image=result.image: image.save(temporary, format="PNG")
                            )
                        bar.update(len(batch))
                        made += len(batch)
                write_json(
                    job.chunk_path(chunk), {"items": [item.index for item in items], "process": state.process_index}
                )
        finally:
            switch.close()
    state.wait_for_everyone()
    return made


def require_images(out_dir: Path, plan: EvaluationPlan, chunk_size: int, state: PartialState) -> None:
    """Refuse to go on without every image (``--skip-generation`` on an unfinished generation)."""
    job = generation_pass(out_dir, plan, chunk_size, state)
    job.my_chunks()  # checks that the folder's generation is this plan's
    missing = job.missing()
    if missing:
        raise ValueError(
            f"{len(missing)} of {job.num_chunks} chunks of images are not generated yet in {out_dir}; "
            "run without --skip-generation to make them"
        )


def load_images(out_dir: Path, plan: EvaluationPlan, items: Sequence[Item]) -> list[torch.Tensor]:
    """The images of ``items`` as float tensors (3, H, W) in [0, 1]."""
    return [rgb_tensor(open_image(out_dir / plan.image_path(item))) for item in items]


def by_size(images: Sequence[torch.Tensor]) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(positions, stacked batch) of the images of each size, so that a batch never mixes sizes."""
    groups: dict[tuple, list[int]] = {}
    for position, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(position)
    for positions in groups.values():
        yield positions, torch.stack([images[position] for position in positions])


# ---------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ScoreColumn:
    """A score column: the metric that fills it and how it was made (its registry spec and options)."""

    name: str
    metric: QualityMetric
    spec: dict


def score_columns(specs: dict[str, tuple[str, dict]], device: str | torch.device = "cpu") -> list[ScoreColumn]:
    """One :class:`ScoreColumn` per ``{column: (registry name, options)}``, its metric built on ``device``."""
    return [
        ScoreColumn(column, create_metric(name, device=device, **options).eval(), {"name": name, "options": options})
        for column, (name, options) in specs.items()
    ]


def score_images(
    out_dir: Path,
    plan: EvaluationPlan,
    columns: Sequence[ScoreColumn],
    *,
    chunk_size: int,
    state: PartialState,
    progress: bool = True,
) -> None:
    """Score every image with every column's metric, decoding each image once for all the columns it lacks."""
    identity = generation_pass(out_dir, plan, chunk_size, state).parameters
    fingerprint = hash_of(identity)
    passes = {
        column.name: ChunkedPass(
            out_dir / SCORES_DIR / column.name,
            {"metric": column.spec, "images": fingerprint, "chunk_size": chunk_size},
            len(plan),
            chunk_size,
            ".parquet",
            state,
        )
        for column in columns
    }
    mine = {name: set(job.my_chunks()) for name, job in passes.items()}
    chunks = sorted(set().union(*mine.values())) if mine else []
    metrics = {column.name: column.metric for column in columns}
    any_pass = next(iter(passes.values()), None)
    with progress_bar(
        sum(len(any_pass.items(chunk)) for chunk in chunks) if any_pass else 0, "score", state, progress
    ) as bar:
        for chunk in chunks:
            items = [plan.item(index) for index in any_pass.items(chunk)]
            images = load_images(out_dir, plan, items)
            for name in [name for name in metrics if chunk in mine[name]]:
                frame = pd.DataFrame(
                    {"item": [item.index for item in items], "score": score_tensors(metrics[name], images)}
                )
                atomic_write(
                    passes[name].chunk_path(chunk), lambda path, frame=frame: frame.to_parquet(path, index=False)
                )
            bar.update(len(items))
    state.wait_for_everyone()


def score_tensors(metric: QualityMetric, images: Sequence[torch.Tensor]) -> np.ndarray:
    """A metric's scores (float32) of images (3, H, W) in [0, 1] of any sizes, a batch per size."""
    values = np.full(len(images), np.nan, dtype=np.float32)
    for positions, batch in by_size(images):
        values[positions] = metric.score(batch.to(metric.device)).cpu().numpy()
    return values


def read_scores(out_dir: Path, plan: EvaluationPlan, column: str) -> np.ndarray:
    """One column's scores of every item, float64 in item order."""
    folder = out_dir / SCORES_DIR / column
    frames = [pd.read_parquet(path) for path in sorted(folder.glob("chunk_*.parquet"))]
    values = np.full(len(plan), np.nan)
    for frame in frames:
        values[frame["item"].to_numpy()] = frame["score"].to_numpy(np.float64)
    return values


def hash_of(data) -> str:
    """A short stable digest of JSON-serialisable data."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- other per-image measures


def run_image_pass(
    out_dir: Path,
    plan: EvaluationPlan,
    folder: str,
    parameters: dict,
    wanted: Callable[[Item], bool],
    measure: Callable[[list[Item], list[torch.Tensor]], pd.DataFrame],
    *,
    chunk_size: int,
    state: PartialState,
    description: str,
    progress: bool = True,
) -> ChunkedPass:
    """A pass computing ``measure(items, images) -> frame with an 'item' column`` on the items ``wanted`` keeps.

    Chunks are the generation's; a chunk without wanted items still gets its (empty) file, so that a finished
    pass is one with every chunk file.
    """
    identity = generation_pass(out_dir, plan, chunk_size, state).parameters
    job = ChunkedPass(
        out_dir / folder,
        {**parameters, "images": hash_of(identity), "chunk_size": chunk_size},
        len(plan),
        chunk_size,
        ".parquet",
        state,
    )
    mine = job.my_chunks()
    selected = {chunk: [plan.item(index) for index in job.items(chunk) if wanted(plan.item(index))] for chunk in mine}
    with progress_bar(sum(len(items) for items in selected.values()), description, state, progress) as bar:
        for chunk, items in selected.items():
            frame = measure(items, load_images(out_dir, plan, items)) if items else pd.DataFrame({"item": []})
            atomic_write(job.chunk_path(chunk), lambda path, frame=frame: frame.to_parquet(path, index=False))
            bar.update(len(items))
    state.wait_for_everyone()
    return job


def read_pass(out_dir: Path, folder: str, key: str = "item") -> pd.DataFrame:
    """Every row a pass wrote, sorted by ``key``."""
    frames = [
        frame for path in sorted((out_dir / folder).glob("chunk_*.parquet")) if len(frame := pd.read_parquet(path))
    ]
    if not frames:
        return pd.DataFrame({key: []})
    return pd.concat(frames, ignore_index=True).sort_values(key, kind="stable").reset_index(drop=True)
