"""Distances between quality levels (paper section 13.2, Figure 11): how far apart the images of the same prompt
and seed are at two input percentiles.

For every adapter, prompt and seed (a *group*), each pair of percentiles of the sweep gets a distance between
its two images, and the report gives the mean over groups as a percentile x percentile matrix per measure:

* ``ssim``: 1 - SSIM, and ``ms_ssim``: 1 - MS-SSIM with as many scales as the images allow (up to 5; the
  report says how many), both built in (:mod:`iqa_adapter.metrics.full_reference`);
* ``lpips`` and ``dists`` through pyiqa when it is installed (``pip install 'iqa-adapter[pyiqa]'``);
* ``features:<extractor>``: 1 - cosine similarity of deep features (``features:dinov2``, ``features:clip``, any
  extractor of :func:`~iqa_adapter.evaluation.features.create_extractor`).
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import torch

from ..metrics.full_reference import ms_ssim, ssim

BUILT_IN = ("ssim", "ms_ssim")
PYIQA = ("lpips", "dists")
SSIM_WINDOW = 11


def ms_ssim_scales(side: int, window: int = SSIM_WINDOW) -> int:
    """The most MS-SSIM scales (1 to 5) for images whose shorter side is ``side``."""
    return max(1, min(5, int(math.floor(math.log2(side / window))) + 1)) if side >= window else 0


def check_distance_spec(name: str) -> None:
    """A ValueError naming the valid distances unless ``name`` is one (nothing is loaded)."""
    if name.startswith("features:"):
        from .features import parse_extractor_spec

        parse_extractor_spec(name.removeprefix("features:"))
    elif name not in BUILT_IN + PYIQA:
        raise ValueError(
            f"unknown distance {name!r}; choose from {', '.join(BUILT_IN + PYIQA)} or features:<extractor>"
        )


class PairDistance:
    """One image-pair distance (``ssim``, ``ms_ssim``, ``lpips``, ``dists``, ``features:<extractor>``):
    ``__call__(x, y) -> (N,)`` for image batches (N, 3, H, W) in [0, 1]."""

    def __init__(self, name: str, device: str | torch.device = "cpu"):
        check_distance_spec(name)
        self.name, self.device = name, torch.device(device)
        self.model = None
        if name in PYIQA:
            from ..metrics.pyiqa_backend import import_pyiqa

            self.model = import_pyiqa().create_metric(name, device=self.device, as_loss=False)
        elif name.startswith("features:"):
            from .features import create_extractor

            self.model = create_extractor(name.removeprefix("features:"), device=self.device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.name.startswith("features:"):
            features = self.model(torch.cat([x, y]).to(self.device)).double().cpu()
            return 1 - torch.nn.functional.cosine_similarity(features[: len(x)], features[len(x) :], dim=1)
        if self.name == "ssim":
            return 1 - ssim(x, y)
        if self.name == "ms_ssim":
            scales = ms_ssim_scales(min(x.shape[-2:]))
            if scales == 0:
                return torch.full((len(x),), float("nan"))
            return 1 - ms_ssim(x, y, scales=scales)
        with torch.no_grad():
            return self.model(x.to(self.device), y.to(self.device)).reshape(-1).cpu()


def pair_distances(images: list[torch.Tensor], distance: PairDistance) -> dict[tuple[int, int], float]:
    """The distance of every pair (a < b) of one group's images (one per percentile, same size)."""
    pairs = list(combinations(range(len(images)), 2))
    if not pairs:
        return {}
    x = torch.stack([images[a] for a, _ in pairs])
    y = torch.stack([images[b] for _, b in pairs])
    values = distance(x, y).double().tolist()
    return dict(zip(pairs, values))


class MeanMatrix:
    """Running means of the distance of every pair of percentiles, over groups (NaN values left out)."""

    def __init__(self, size: int):
        self.sums, self.counts = np.zeros((size, size)), np.zeros((size, size))

    def add(self, a: int, b: int, value: float) -> None:
        if np.isfinite(value):
            self.sums[a, b] += value
            self.sums[b, a] += value
            self.counts[a, b] += 1
            self.counts[b, a] += 1

    def matrix(self) -> np.ndarray:
        """The symmetric mean matrix, 0 on the diagonal, NaN for pairs without a value."""
        with np.errstate(invalid="ignore", divide="ignore"):
            means = self.sums / self.counts
        np.fill_diagonal(means, 0.0)
        return means
