"""Resumable, distributed passes over a dataset, one chunk at a time (annotation, training caches).

A pass lists the dataset in a fixed order and cuts it into chunks of ``chunk_size`` samples. Each chunk's
result is one file, written atomically once all its samples are done, so a pass killed at any point and
started again redoes only the chunks without a file. Under ``accelerate launch`` the unfinished chunks are
dealt out to the processes in turn. The job's parameters are recorded in a JSON file beside the chunks and
a restart with other parameters is refused.

:class:`ChunkBatches` is a batch sampler that yields :class:`WorkItem` batches of the chosen chunks;
:class:`ItemLoader` reads each item in a data-loader worker; :class:`ChunkCollector` gathers the results
and hands over each chunk once complete.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from torch.utils.data import Dataset

from .datasets import SUPPORTED_INPUTS, DatasetError, ImageTextReader, Sample
from .io_utils import write_json


class JobMismatchError(ValueError):
    """An output folder holds a job started with other parameters."""


def process_state(device: str | torch.device | None = None) -> PartialState:
    """accelerate's view of this process; CPU runs (``--cpu``, a CPU device, or no GPU) use the gloo backend."""
    cpu = (
        parse_flag_from_env("ACCELERATE_USE_CPU")
        or not torch.cuda.is_available()
        or (device is not None and torch.device(device).type == "cpu")
    )
    return PartialState(cpu=cpu)


def start_or_resume(
    job_file: Path, parameters: dict, count: Callable[[], int], state: PartialState, partial_files: Path
) -> int:
    """Record the job on a first run, or check that a restart has the same ``parameters``.

    Also removes the temporary files a killed run left in ``partial_files``. Returns the number of items,
    ``count()`` called once, on the first run (e.g. :func:`count_samples` of a dataset).
    """
    if state.is_main_process:
        if not job_file.exists():
            write_json(job_file, {**parameters, "num_samples": count()})
        for leftover in partial_files.glob(".*.tmp"):
            leftover.unlink()
    state.wait_for_everyone()
    job = json.loads(job_file.read_text())
    names = [*parameters, *(name for name in job if name not in parameters and name != "num_samples")]
    changed = [
        f"{name}: {job.get(name)!r} -> {parameters.get(name)!r}"
        for name in names
        if job.get(name) != parameters.get(name)
    ]
    if changed:
        raise JobMismatchError(
            f"{job_file.parent} holds a job started with other parameters ({'; '.join(changed)}); "
            "rerun with the original parameters to resume it, or choose a new output folder"
        )
    return int(job["num_samples"])


def count_samples(reader: ImageTextReader, data: str) -> int:
    count = sum(1 for _ in reader)
    if count == 0:
        raise DatasetError(f"no images found in {data!r}; give {SUPPORTED_INPUTS}")
    return count


def my_unfinished_chunks(
    num_samples: int, chunk_size: int, chunk_path: Callable[[int], Path], state: PartialState
) -> tuple[int, list[int]]:
    """(number of chunks, the unfinished chunks this process does)."""
    num_chunks = math.ceil(num_samples / chunk_size)
    unfinished = [index for index in range(num_chunks) if not chunk_path(index).exists()]
    state.wait_for_everyone()  # every process has listed the same finished chunks before new ones appear
    return num_chunks, unfinished[state.process_index :: state.num_processes]


class WorkItem(NamedTuple):
    """A sample with its place in the job: its chunk, the chunk's number of samples, its position there."""

    chunk: int
    chunk_length: int
    position: int
    sample: Sample


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@dataclass(frozen=True)
class ChunkBatches:
    """Batch sampler: lists the dataset and yields batches of the work items of the given chunks.

    A batch never mixes chunks. The items are the keys of an :class:`ItemLoader`, sent to the loader workers.
    """

    reader: ImageTextReader
    chunks: Sequence[int]
    chunk_size: int
    batch_size: int

    def __iter__(self) -> Iterator[list[WorkItem]]:
        wanted, last = set(self.chunks), max(self.chunks, default=-1)
        for index, samples in enumerate(batched(self.reader, self.chunk_size)):
            if index > last:
                return
            if index in wanted:
                items = [WorkItem(index, len(samples), position, sample) for position, sample in enumerate(samples)]
                yield from batched(items, self.batch_size)


class ItemLoader(Dataset):
    """Applies ``load(sample)`` to a work item's sample, in a data-loader worker."""

    def __init__(self, load: Callable[[Sample], Any]):
        self.load = load

    def __getitem__(self, item: WorkItem) -> tuple[WorkItem, Any]:
        return item, self.load(item.sample)


class ChunkCollector:
    """Collects per-sample results; calls ``on_complete(chunk, results in dataset order)`` once a chunk is full."""

    def __init__(self, on_complete: Callable[[int, list], None]):
        self.on_complete = on_complete
        self.pending: dict[int, dict[int, Any]] = defaultdict(dict)

    def add(self, item: WorkItem, result: Any) -> None:
        results = self.pending[item.chunk]
        results[item.position] = result
        if len(results) == item.chunk_length:
            del self.pending[item.chunk]
            self.on_complete(item.chunk, [results[position] for position in sorted(results)])
