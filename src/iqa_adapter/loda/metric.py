"""A trained LoDa checkpoint as a quality metric: registry name ``loda:<checkpoint directory>``.

Images of any size are scored by crop averaging: images whose shorter side is below the model's crop size
(224 for the paper's model) are first upscaled to it (bilinear, aspect kept); then ``crops`` crops of the
crop size are taken at the same positions in every image of the batch and their scores averaged. The
default is a deterministic uniform grid of 15 crops (3 x 5, the paper's count), so scores are reproducible;
``crop_mode="random"`` draws the positions from ``seed`` (the same positions on every call). Scores lie in
[-1, 1] (the cosine head), higher is better. Everything is differentiable in the images, for guidance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..metrics.base import QualityMetric, check_images
from ..metrics.registry import MetricInfo
from .data import crop_positions, fit_min_size, take_crops
from .model import LoDa, read_checkpoint_config

PREFIX = "loda:"


class LoDaMetric(QualityMetric):
    """LoDa (Xu et al., CVPR 2024): ViT with injected local distortion features, from a trained checkpoint."""

    name = "loda"
    higher_is_better = True
    score_range = (-1.0, 1.0)
    differentiable = True

    def __init__(self, checkpoint: str | Path, crops: int = 15, crop_mode: str = "uniform", seed: int = 0,
                 batch_size: int = 64, verify: bool = True):
        super().__init__()
        self.checkpoint = str(checkpoint)
        self.model = LoDa.from_pretrained(checkpoint, verify=verify).requires_grad_(False)
        self.crops, self.crop_mode, self.seed, self.batch_size = crops, crop_mode, seed, batch_size
        crop_positions(self.model.crop_size, self.model.crop_size, self.model.crop_size, crops, crop_mode,
                       np.random.default_rng(seed))  # checks the crop settings now
        self.train(False)

    def train(self, mode: bool = True) -> LoDaMetric:
        """The metric always evaluates: the network stays in eval mode (no dropout, frozen statistics)."""
        super().train(mode)
        self.model.train(False)
        return self

    def _crops(self, images: torch.Tensor) -> torch.Tensor:
        """(N, crops, 3, S, S) crops of images (N, 3, H, W)."""
        size = self.model.crop_size
        images = fit_min_size(check_images(images, self.name).to(self.device), size)
        positions = crop_positions(*images.shape[-2:], size, self.crops, self.crop_mode,
                                   np.random.default_rng(self.seed))
        return take_crops(images, size, positions)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scores (N,): the mean over the crops of each image."""
        crops = self._crops(images).flatten(0, 1)
        scores = torch.cat([self.model(chunk) for chunk in crops.split(self.batch_size)])
        return scores.view(len(images), self.crops).mean(dim=1)

    def features(self, images: torch.Tensor, blocks: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Activations averaged over the crops: ``cls`` (N, D), the final CLS feature the head scores;
        ``distortion_tokens`` (N, T, r); ``injected.<i>`` (N, 1 + patches, D), what the injector of ViT
        block i added to the tokens (all blocks, or those in ``blocks``). Checkpoints of the ViT-only
        baselines give ``cls`` only."""
        crops = self._crops(images)
        outputs = [self.model.forward_features(chunk) for chunk in crops.flatten(0, 1).split(self.batch_size)]
        merged = {}
        for key in outputs[0]:
            if key.startswith("injected.") and blocks is not None and int(key.split(".")[1]) not in blocks:
                continue
            stacked = torch.cat([out[key] for out in outputs])
            merged[key] = stacked.view(len(images), self.crops, *stacked.shape[1:]).mean(dim=1)
        return merged

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, checkpoint={self.checkpoint!r}, crops={self.crops} ({self.crop_mode})"


def prefixed_metric_info(argument: str) -> MetricInfo:
    """Registry description of ``loda:<checkpoint directory>`` (reads the config only)."""
    config = read_checkpoint_config(argument)["config"]
    return MetricInfo(
        name=PREFIX + argument, higher_is_better=True, score_range=LoDaMetric.score_range, differentiable=True,
        description=f"LoDa checkpoint ({config['variant']}, preset {config.get('preset')}) in {argument}",
        factory=lambda **options: LoDaMetric(argument, **options), backend="loda",
    )


def create_prefixed_metric(argument: str, **options) -> LoDaMetric:
    """The metric of ``loda:<checkpoint directory>``; options go to :class:`LoDaMetric`."""
    return LoDaMetric(argument, **options)
