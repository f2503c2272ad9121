"""Built-in classical no-reference metrics that need no weight files.

Every metric takes RGB images (N, 3, H, W) in [0, 1], works on the images' device and processes the
whole batch at once. Most of them look at the luma only (:func:`luma`, ITU-R BT.601 weights as MATLAB's
``rgb2gray``). :func:`mscn` (mean-subtracted contrast-normalised coefficients) and :func:`split_blocks` are
shared with NIQE (:mod:`iqa_adapter.metrics.niqe`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import QualityMetric
from .registry import register_metric

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as MATLAB's rgb2gray
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
IMMERKAER = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
JPEG_BLOCK = 8


# ---------------------------------------------------------------- shared helpers


def luma(images: torch.Tensor) -> torch.Tensor:
    """Luma Y = 0.299 R + 0.587 G + 0.114 B of RGB images (N, 3, H, W), as (N, 1, H, W) on the same scale."""
    weights = images.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def require_size(images: torch.Tensor, min_height: int, min_width: int, metric: str, reason: str) -> None:
    """Raise a ValueError naming the metric when images are smaller than ``min_height`` x ``min_width``."""
    height, width = images.shape[-2:]
    if height < min_height or width < min_width:
        raise ValueError(f"{metric}: images must be at least {min_height}x{min_width} pixels ({reason}), got "
                         f"{height}x{width}; upscale small images first")


def filter2d(gray: torch.Tensor, kernel: torch.Tensor | tuple, padding: str = "valid") -> torch.Tensor:
    """Correlate single-channel images (N, 1, H, W) with a 2-D kernel.

    ``padding="valid"`` keeps only the positions where the kernel fits inside the image;
    ``padding="replicate"`` repeats the border pixels and keeps the size (MATLAB ``imfilter(..., 'replicate')``).
    """
    kernel = torch.as_tensor(kernel, dtype=gray.dtype, device=gray.device)
    if padding == "replicate":
        rows, cols = kernel.shape
        gray = F.pad(gray, ((cols - 1) // 2, cols // 2, (rows - 1) // 2, rows // 2), mode="replicate")
    elif padding != "valid":
        raise ValueError(f"padding must be 'valid' or 'replicate', got {padding!r}")
    return F.conv2d(gray, kernel[None, None])


def gaussian_window(size: int = 7, sigma: float = 7 / 6) -> torch.Tensor:
    """Normalised 2-D Gaussian window (MATLAB ``fspecial('gaussian', size, sigma)``), float64."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-offsets**2 / (2 * sigma**2))
    window = profile[:, None] * profile[None, :]
    return window / window.sum()


def mscn(gray: torch.Tensor, c: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-subtracted contrast-normalised (MSCN) coefficients of grey images (N, 1, H, W) in [0, 255].

    ``(I - mu) / (sigma + c)`` with the local mean ``mu`` and local standard deviation ``sigma`` weighted by a
    7x7 Gaussian window (sigma 7/6, replicated borders), as in the reference code of NIQE (Mittal et al. 2013)
    and PIQE (Venkatanath et al. 2015). Returns ``(coefficients, sigma)``, both (N, 1, H, W).
    """
    window = gaussian_window()
    mu = filter2d(gray, window, padding="replicate")
    sigma = (filter2d(gray * gray, window, padding="replicate") - mu * mu).abs().sqrt()
    return (gray - mu) / (sigma + c), sigma


def split_blocks(gray: torch.Tensor, size: int) -> torch.Tensor:
    """Non-overlapping ``size`` x ``size`` blocks of images (N, 1, H, W), as (N, blocks, size, size).

    Rows and columns past the last whole block (bottom and right) are dropped; blocks are in row-major order.
    """
    count, _, height, width = gray.shape
    rows, cols = height // size, width // size
    gray = gray[:, 0, : rows * size, : cols * size]
    return gray.reshape(count, rows, size, cols, size).transpose(2, 3).reshape(count, rows * cols, size, size)


def _sqrt_or_zero(value: torch.Tensor) -> torch.Tensor:
    """Square root whose gradient at 0 is 0, not infinite, so flat images do not give NaN gradients."""
    positive = value > 0
    return torch.where(positive, torch.where(positive, value, 1.0).sqrt(), 0.0)


# ---------------------------------------------------------------- metrics


@register_metric
class PIQE(QualityMetric):
    """PIQE: blockwise perception-based distortion score, parameter-free (0 best, 100 worst).

    Venkatanath N., Praneeth D., Maruthi Chandrasekhar Bh., Channappayya S. S., Medasani S. S., "Blind image
    quality evaluation using perception based features", NCC 2015; follows MATLAB's ``piqe`` and pyiqa.

    1. Luma stretched to [0, 255] and rounded: ``Y = round(255 * Y / max(Y))``; the image is then cropped at
       the bottom and right to a multiple of 16 pixels (MATLAB pads instead), and must be at least 16x16.
    2. MSCN coefficients (:func:`mscn`, c = 1), split into 16x16 blocks.
    3. A block is *active* when the sample variance ``v`` of its coefficients exceeds 0.1. Active blocks are
       tested for two distortions:

       - *noticeable distortion*: some segment of 6 consecutive pixels on one of the 4 block edges has a
         sample standard deviation below 0.1 (blocking, ringing, flat patches next to structure);
       - *noise*: ``sigma > 2 beta`` with ``sigma = sqrt(v)``, ``beta = |sigma - r| / max(sigma, r)`` and
         ``r`` the ratio of the standard deviations of the two centre columns and of the 14 other columns.

    4. ``PIQE = 100 (sum over active blocks of [noticeable] (1 - v) + [noisy] v + 1) / (active blocks + 1)``.

    A flat image has no active block and scores 100. Thresholding makes the score non-differentiable.
    """

    name = "piqe"
    higher_is_better = False
    score_range = (0.0, 100.0)
    differentiable = False

    block_size = 16
    activity_threshold = 0.1
    impaired_threshold = 0.1
    segment_length = 6

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.block_size
        require_size(images, size, size, self.name, f"one {size}x{size} block")
        height, width = (side // size * size for side in images.shape[-2:])
        gray = luma(images[..., :height, :width])
        peak = gray.amax(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(gray.dtype).tiny)
        coefficients, _ = mscn(torch.round(255 * gray / peak))
        blocks = split_blocks(coefficients, size)
        variance = blocks.var(dim=(-2, -1))
        active = variance > self.activity_threshold
        distortion = (self._noticeable(blocks) * (1 - variance) + self._noisy(blocks, variance) * variance) * active
        return 100 * (distortion.sum(dim=1) + 1) / (active.sum(dim=1) + 1)

    def _noticeable(self, blocks: torch.Tensor) -> torch.Tensor:
        """Blocks with a low-variance segment on one of their 4 edges (N, blocks), boolean."""
        edges = torch.stack([blocks[..., 0, :], blocks[..., -1, :], blocks[..., :, 0], blocks[..., :, -1]], dim=-2)
        segments = edges.unfold(-1, self.segment_length, 1)  # (N, blocks, 4 edges, segments, length)
        return (segments.std(dim=-1) < self.impaired_threshold).flatten(-2).any(dim=-1)

    def _noisy(self, blocks: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """Blocks that pass the noise criterion sigma > 2 beta (N, blocks), boolean."""
        middle = self.block_size // 2
        centre = blocks[..., middle - 1 : middle + 1]
        surround = torch.cat([blocks[..., : middle - 1], blocks[..., middle + 1 :]], dim=-1)
        ratio = torch.nan_to_num(centre.std(dim=(-2, -1)) / surround.std(dim=(-2, -1)), nan=0.0)
        sigma = variance.sqrt()
        beta = (sigma - ratio).abs() / torch.maximum(sigma, ratio)
        return sigma > 2 * beta


@register_metric
class Sharpness(QualityMetric):
    """Sharpness: mean squared Laplacian of the luma (energy of Laplacian), higher is sharper.

    ``S = mean over valid pixels of (L * Y)^2`` with ``Y`` the luma in [0, 1] and the 4-neighbour Laplacian
    ``L = [[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` without padding (the (H-2) x (W-2) positions where the kernel
    fits). Energy of Laplacian: Subbarao, Choi and Nikzad, "Focusing techniques", Optical Engineering 32(11),
    1993; see also Pech-Pacheco et al., "Diatom autofocusing in brightfield microscopy: a comparative study",
    ICPR 2000. Bounded by 16 (a one-pixel checkerboard); natural photographs mostly score below 0.05.
    Needs images of at least 3x3 pixels.
    """

    name = "sharpness"
    higher_is_better = True
    score_range = (0.0, 16.0)
    differentiable = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        require_size(images, 3, 3, self.name, "one 3x3 Laplacian window")
        return filter2d(luma(images), LAPLACIAN).square().mean(dim=(1, 2, 3))


@register_metric
class Noise(QualityMetric):
    """Noise: Immerkaer's fast estimate of the standard deviation of Gaussian noise (grey levels), lower is better.

    J. Immerkaer, "Fast noise variance estimation", Computer Vision and Image Understanding 64(2), 1996:
    ``sigma = sqrt(pi / 2) / (6 (W - 2)(H - 2)) * sum |Y * N|`` with the luma ``Y`` in [0, 255] and
    ``N = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]`` (the difference of two Laplacians, blind to linear ramps),
    summed over the (H-2) x (W-2) positions where the kernel fits. Strong texture also raises the estimate.
    Needs images of at least 3x3 pixels.
    """

    name = "noise"
    higher_is_better = False
    score_range = (0.0, 20.0)
    differentiable = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        require_size(images, 3, 3, self.name, "one 3x3 noise-estimation window")
        response = filter2d(255 * luma(images), IMMERKAER).abs().mean(dim=(1, 2, 3))
        return math.sqrt(math.pi / 2) / 6 * response


@register_metric
class Blockiness(QualityMetric):
    """Blockiness: luma steps across the 8x8 JPEG grid relative to steps inside blocks (1 = none), lower is better.

    With the luma ``Y`` in [0, 255] and the absolute differences between horizontally and vertically adjacent
    pixels, ``B`` is the mean of those that cross a block boundary (between pixel 8k - 1 and 8k, grid anchored
    at the top-left corner as in JPEG) and ``A`` the mean of all others; both directions pooled:
    ``blockiness = (B + 1) / (A + 1)``. The 1 (one grey level) keeps flat images at 1. The boundary
    differences ``B`` are those of Wang, Sheikh and Bovik, "No-reference perceptual quality assessment of
    JPEG compressed images", ICIP 2002, here simply normalised by the activity inside blocks. Needs images of
    at least 9x9 pixels (one block boundary each way).
    """

    name = "blockiness"
    higher_is_better = False
    score_range = (1.0, 3.0)
    differentiable = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        require_size(images, JPEG_BLOCK + 1, JPEG_BLOCK + 1, self.name, "one 8x8 block boundary each way")
        gray = 255 * luma(images)[:, 0]
        height, width = gray.shape[-2:]
        across_columns = (gray[..., :, 1:] - gray[..., :, :-1]).abs()  # (N, H, W-1)
        across_rows = (gray[..., 1:, :] - gray[..., :-1, :]).abs()  # (N, H-1, W)
        on_column_grid = torch.arange(1, width, device=gray.device) % JPEG_BLOCK == 0
        on_row_grid = torch.arange(1, height, device=gray.device) % JPEG_BLOCK == 0

        boundary_sum = (across_columns[..., on_column_grid].sum(dim=(-2, -1))
                        + across_rows[..., on_row_grid, :].sum(dim=(-2, -1)))
        total_sum = across_columns.sum(dim=(-2, -1)) + across_rows.sum(dim=(-2, -1))
        boundary_count = int(on_column_grid.sum()) * height + int(on_row_grid.sum()) * width
        inner_count = across_columns[0].numel() + across_rows[0].numel() - boundary_count
        boundary = boundary_sum / boundary_count
        inner = (total_sum - boundary_sum) / inner_count
        return (boundary + 1) / (inner + 1)


@register_metric
class Colorfulness(QualityMetric):
    """Colorfulness: Hasler and Suesstrunk's colourfulness of the RGB values, higher is more colourful.

    D. Hasler and S. Suesstrunk, "Measuring colourfulness in natural images", SPIE Human Vision and
    Electronic Imaging VIII, 2003: with R, G, B in [0, 255], ``rg = R - G`` and ``yb = (R + G) / 2 - B``,
    ``M = sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)`` (standard deviations over the
    pixels, population form). The paper's scale: 15 slightly, 33 moderately, 59 quite, 109 extremely colourful.
    """

    name = "colorfulness"
    higher_is_better = True
    score_range = (0.0, 150.0)
    differentiable = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        red, green, blue = (255 * images).unbind(dim=1)
        rg = red - green
        yb = (red + green) / 2 - blue
        spread = rg.var(dim=(-2, -1), correction=0) + yb.var(dim=(-2, -1), correction=0)
        offset = rg.mean(dim=(-2, -1)).square() + yb.mean(dim=(-2, -1)).square()
        return _sqrt_or_zero(spread) + 0.3 * _sqrt_or_zero(offset)


@register_metric
class Contrast(QualityMetric):
    """Contrast: RMS contrast, the standard deviation of the luma in [0, 1], higher is more contrasted.

    ``C = sqrt(mean((Y - mean(Y))^2))`` (population form); E. Peli, "Contrast in complex images", JOSA A 7(10),
    1990. Bounded by 0.5 (half black, half white).
    """

    name = "contrast"
    higher_is_better = True
    score_range = (0.0, 0.5)
    differentiable = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _sqrt_or_zero(luma(images).var(dim=(1, 2, 3), correction=0))
