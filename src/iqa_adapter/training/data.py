"""Training data: image-text samples joined to their quality scores, image transforms, and the sample order.

* :func:`list_training_samples` lists a dataset (any format :func:`iqa_adapter.datasets.open_dataset`
  reads) and joins each sample to its scores by key in a :class:`~iqa_adapter.annotate.ScoreTable`
  (a dict look-up, never a scan). Samples without scores, or with a NaN or infinite score for one of the
  conditioning metrics, are left out and counted.
* :class:`ImageTransform` turns an image into the training crop: the shorter side resized to the
  resolution, a centre or random square crop, an optional horizontal flip; pixels in [-1, 1]. It records the
  original size and the crop corner, SDXL's micro-conditioning.
* :class:`StepSampler` fixes which samples every optimizer step sees, from the seed alone: each epoch is a
  seeded permutation of the samples, cut into global micro-batches; process ``r`` of ``n`` takes the ``r``-th
  slice of each. Every random draw for a sample (noise, timestep, condition drops, crop) comes from a
  generator seeded with the seed and the sample's place in the run (:func:`sample_generator`), so a run
  resumed at step ``s`` and a run on ``n`` processes see exactly the samples and draws of one uninterrupted
  single-process run with the same global batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from ..annotate import ScoreTable
from ..datasets import Sample, decode_image, open_dataset
from ..images import to_rgb

CROPS = ("center", "random")


class SampleDraw(NamedTuple):
    """One sample to train on: its index in the sample list and its place in the run."""

    index: int  # position in the training sample list
    micro_batch: int  # global micro-batch counter (optimizer step x accumulation + micro-step)
    position: int  # position in the global micro-batch


def sample_generator(seed: int, draw: SampleDraw, stream: str) -> torch.Generator:
    """A CPU generator for one random stream (``"noise"``, ``"crop"``, ...) of one sample of the run.

    Seeded by a hash of (seed, micro-batch, position, stream): independent of the process count and of
    where a run was resumed.
    """
    text = f"{seed}/{draw.micro_batch}/{draw.position}/{stream}".encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little"))


@dataclass(frozen=True)
class TrainingSample:
    """A dataset sample with the raw scores of the conditioning metrics."""

    sample: Sample
    scores: np.ndarray  # float32 (D,), raw metric values in the order of the adapter's metrics

    @property
    def key(self) -> str:
        return self.sample.key


@dataclass(frozen=True)
class SampleListing:
    """The training samples of a dataset and what was left out."""

    samples: list[TrainingSample]
    without_scores: int
    non_finite_scores: int

    def summary(self) -> str:
        return (
            f"{len(self.samples)} samples with scores; left out: {self.without_scores} without scores, "
            f"{self.non_finite_scores} with a NaN or infinite score"
        )


def list_training_samples(data: str, scores: ScoreTable | None, metrics: Sequence[str]) -> SampleListing:
    """Join every sample of ``data`` to its scores for ``metrics`` (columns of ``scores``) by key.

    Without a score table (reference-conditioned training) every sample is listed, with no scores.
    """
    if scores is None:
        samples = [TrainingSample(sample, np.zeros(0, dtype=np.float32)) for sample in open_dataset(data)]
        if not samples:
            raise ValueError(f"no samples found in {data!r}")
        return SampleListing(samples, 0, 0)
    missing = [name for name in metrics if name not in scores.metrics]
    if missing:
        raise ValueError(
            f"the score table has no column for {', '.join(missing)}; it has {', '.join(scores.metrics)} "
            "(score the data with `iqa-adapter annotate --metrics ...`)"
        )
    columns = [scores.metrics.index(name) for name in metrics]
    samples: list[TrainingSample] = []
    without_scores = non_finite = 0
    for sample in open_dataset(data):
        if sample.key not in scores:
            without_scores += 1
            continue
        values = scores.vector(sample.key)[columns]
        if not np.isfinite(values).all():
            non_finite += 1
            continue
        samples.append(TrainingSample(sample, values.copy()))
    if not samples:
        raise ValueError(
            f"no sample of {data!r} has finite scores for {', '.join(metrics)} in the score table "
            f"({without_scores} samples without scores): are the data and the scores the same dataset?"
        )
    return SampleListing(samples, without_scores, non_finite)


class CropInfo(NamedTuple):
    """SDXL micro-conditioning of a training crop: original (height, width) and the crop's top-left corner."""

    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]


@dataclass(frozen=True)
class ImageTransform:
    """Shorter side to ``resolution``, square crop (centre or random), optional flip; [-1, 1] pixels.

    The resize is the official training script's (torchvision ``Resize(resolution)`` with bilinear filtering on
    the PIL image): the longer side becomes ``int(resolution * longer / shorter)``, truncated.
    """

    resolution: int
    crop: str = "center"
    flip: bool = False

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.resolution < 8:
            raise ValueError(f"resolution must be at least 8 pixels, got {self.resolution}")

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> tuple[torch.Tensor, CropInfo]:
        width, height = image.size
        longer = int(self.resolution * max(width, height) / min(width, height))
        resized = (self.resolution, longer) if width <= height else (longer, self.resolution)
        if resized != image.size:
            image = image.resize(resized, Image.Resampling.BILINEAR)
        spare_x, spare_y = resized[0] - self.resolution, resized[1] - self.resolution
        if self.crop == "random":
            if generator is None:
                raise ValueError("random crops need a generator")
            top = int(torch.randint(spare_y + 1, (1,), generator=generator))
            left = int(torch.randint(spare_x + 1, (1,), generator=generator))
        else:
            top, left = spare_y // 2, spare_x // 2
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
        if self.flip and generator is not None and float(torch.rand((), generator=generator)) < 0.5:
            pixels = pixels.flip(-1)
        return pixels.contiguous(), CropInfo((height, width), (top, left))


def load_training_image(
    sample: TrainingSample, transform: ImageTransform, generator: torch.Generator | None
) -> tuple[torch.Tensor, CropInfo] | str:
    """The sample's training crop, or the reason it cannot be read (corrupt, truncated, missing)."""
    try:
        image = to_rgb(decode_image(sample.sample.read()))
    except Exception as error:  # noqa: BLE001 - any unreadable image is skipped and counted, never fatal
        return f"{sample.sample.source}: {error}"
    return transform(image, generator)


@dataclass(frozen=True)
class StepSampler:
    """The samples of every micro-batch of the run, for one process (a batch sampler for a DataLoader).

    Yields, from micro-batch ``start`` on, the :class:`SampleDraw` items of this process: epoch ``e`` is the
    permutation of the ``num_samples`` indices drawn from ``seed`` and ``e``, cut into global micro-batches
    of ``global_batch`` samples (the last incomplete one is dropped); process ``rank`` of ``world`` takes
    positions ``rank * local .. (rank + 1) * local`` of each.
    """

    num_samples: int
    global_batch: int
    rank: int = 0
    world: int = 1
    seed: int = 0
    start: int = 0

    def __post_init__(self) -> None:
        if self.global_batch % self.world:
            raise ValueError(f"the global batch {self.global_batch} does not split over {self.world} processes")
        if self.num_samples < self.global_batch:
            raise ValueError(
                f"{self.num_samples} training samples are fewer than one global batch of "
                f"{self.global_batch}; lower --batch-size or --gradient-accumulation, or add data"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))

    def __iter__(self) -> Iterator[list[SampleDraw]]:
        local = self.global_batch // self.world
        micro_batch = self.start
        epoch, order = None, None
        while True:
            batch_epoch, within = divmod(micro_batch, self.batches_per_epoch)
            if batch_epoch != epoch:
                epoch, order = batch_epoch, self.permutation(batch_epoch)
            first = within * self.global_batch + self.rank * local
            yield [
                SampleDraw(int(order[first + offset]), micro_batch, self.rank * local + offset)
                for offset in range(local)
            ]
            micro_batch += 1
