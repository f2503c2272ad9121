"""A trained LoDa checkpoint as a quality metric: registry name ``loda:<checkpoint directory>``.

Images of any size are scored by crop averaging, after the pre-processing the checkpoint was trained with:
its config's ``resize``, if any (e.g. the shorter side to 384 with a ``--dataset`` preset), then images whose
shorter side is below the model's crop size (224 for the paper's model) are upscaled to it (bilinear, aspect
kept); then ``crops`` crops of the crop size are taken at the same positions in every image of the batch and
their scores averaged. The default is a deterministic uniform grid of 15 crops (3 x 5, the paper's count),
so scores are reproducible; ``crop_mode="random"`` draws the positions from ``seed`` (the same positions on
every call). A position that occurs several times (every one, for an image of exactly the crop size) is
scored once and weighted by its count: the same average, computed once. Higher is better; everything is
differentiable in the images (the resize included), for guidance.

Why the resize applies at scoring time too: the official code tests on the same resized files it trains on,
so a checkpoint has only seen image content at that scale; cropped at its native size, a 1024x1024 image
would show the model 224 px windows of a 2.7 times finer scale than in training (1024 / 384). Resizing keeps
the crops at the trained scale and the calibration (fitted on resized training images) valid.

Scores are **calibrated** by default: checkpoints trained by :func:`iqa_adapter.loda.train.train` carry a
linear map ``a * raw + b`` of the raw cosine score (in [-1, 1]) onto the MOS scale of their training data,
fitted by least squares on the training split (:mod:`iqa_adapter.loda.calibration`), and the metric's
``score_range`` is the training MOS range. ``calibrated=False`` gives the raw cosine scores (range
[-1, 1]); so do checkpoints without a calibration. The map is linear, so rankings and gradient directions
are those of the raw scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..metrics.base import QualityMetric, check_images
from ..metrics.registry import MetricInfo
from .calibration import Calibration, read_calibration
from .data import crop_positions
from .evaluate import image_crops
from .model import LoDa, read_checkpoint_config
from .preprocess import Resize

PREFIX = "loda:"
RAW_RANGE = (-1.0, 1.0)


class LoDaMetric(QualityMetric):
    """LoDa (Xu et al., CVPR 2024): ViT with injected local distortion features, from a trained checkpoint."""

    name = "loda"
    higher_is_better = True
    score_range = RAW_RANGE
    differentiable = True

    def __init__(
        self,
        checkpoint: str | Path,
        crops: int = 15,
        crop_mode: str = "uniform",
        seed: int = 0,
        batch_size: int = 64,
        verify: bool = True,
        calibrated: bool = True,
    ):
        super().__init__()
        self.checkpoint = str(checkpoint)
        calibration = read_calibration(read_checkpoint_config(checkpoint))
        self.model = LoDa.from_pretrained(checkpoint, verify=verify).requires_grad_(False)
        self.crops, self.crop_mode, self.seed, self.batch_size = crops, crop_mode, seed, batch_size
        crop_positions(
            self.model.crop_size,
            self.model.crop_size,
            self.model.crop_size,
            crops,
            crop_mode,
            np.random.default_rng(seed),
        )  # checks the crop settings now
        # None: raw cosine scores (asked for, or a checkpoint without calibration)
        self.calibration: Calibration | None = calibration if calibrated else None
        self.score_range = self.calibration.score_range if self.calibration is not None else RAW_RANGE
        self.train(False)

    def train(self, mode: bool = True) -> LoDaMetric:
        """The metric always evaluates: the network stays in eval mode (no dropout, frozen statistics)."""
        super().train(mode)
        self.model.train(False)
        return self

    def _crops(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct crops (N, k, 3, S, S) of images (N, 3, H, W) and their weights (k,)."""
        images = check_images(images, self.name).to(self.device)
        return image_crops(
            images, self.model.crop_size, self.crops, self.crop_mode, self.seed, self.model.config.resize
        )

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """Raw cosine scores (N,) in [-1, 1]: the weighted mean over the crops of each image."""
        crops, weights = self._crops(images)
        scores = torch.cat([self.model(chunk) for chunk in crops.flatten(0, 1).split(self.batch_size)])
        return (scores.view(len(images), -1) * weights).sum(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scores (N,): calibrated (``a * raw + b``) unless the metric gives raw scores."""
        raw = self.raw(images)
        return self.calibration.apply(raw) if self.calibration is not None else raw

    def features(self, images: torch.Tensor, blocks: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Activations averaged over the crops: ``cls`` (N, D), the final CLS feature the head scores;
        ``distortion_tokens`` (N, T, r); ``injected.<i>`` (N, 1 + patches, D), what the injector of ViT
        block i added to the tokens (all blocks, or those in ``blocks``). Checkpoints of the ViT-only
        baselines give ``cls`` only."""
        crops, weights = self._crops(images)
        outputs = [self.model.forward_features(chunk) for chunk in crops.flatten(0, 1).split(self.batch_size)]
        merged = {}
        for key in outputs[0]:
            if key.startswith("injected.") and blocks is not None and int(key.split(".")[1]) not in blocks:
                continue
            stacked = torch.cat([out[key] for out in outputs])
            stacked = stacked.view(len(images), len(weights), *stacked.shape[1:])
            merged[key] = torch.einsum("nk...,k->n...", stacked, weights)
        return merged

    def extra_repr(self) -> str:
        scale = (
            f"calibrated {self.calibration.a:.4g} * raw + {self.calibration.b:.4g}"
            if self.calibration is not None
            else "raw cosine"
        )
        return f"{super().extra_repr()}, checkpoint={self.checkpoint!r}, crops={self.crops} ({self.crop_mode}), {scale}"


def prefixed_metric_info(argument: str) -> MetricInfo:
    """Registry description of ``loda:<checkpoint directory>`` (reads the config only): the calibrated range
    when the checkpoint has a calibration, as the metric gives by default."""
    meta = read_checkpoint_config(argument)
    config, calibration = meta["config"], read_calibration(meta)
    if calibration is not None:
        scale = (
            f"calibrated to the training MOS ({calibration.a:.4g} * raw + {calibration.b:.4g}, "
            f"{calibration.samples} images)"
        )
        score_range = calibration.score_range
    else:
        scale, score_range = "raw cosine scores", RAW_RANGE
    resized = f", images resized: {Resize.from_dict(config['resize']).describe()}" if config.get("resize") else ""
    return MetricInfo(
        name=PREFIX + argument,
        higher_is_better=True,
        score_range=score_range,
        differentiable=True,
        description=(
            f"LoDa checkpoint ({config['variant']}, preset {config.get('preset')}) in {argument}, {scale}{resized}"
        ),
        factory=lambda **options: LoDaMetric(argument, **options),
        backend="loda",
    )


def create_prefixed_metric(argument: str, **options) -> LoDaMetric:
    """The metric of ``loda:<checkpoint directory>``; options go to :class:`LoDaMetric`."""
    return LoDaMetric(argument, **options)
