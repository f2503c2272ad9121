"""Built-in classical no-reference metrics that need no weight files.

Every metric takes RGB images (N, 3, H, W) in [0, 1] and works on the images' device. Most of them look at
the luma only (:func:`luma`, ITU-R BT.601 weights as MATLAB's ``rgb2gray``). :func:`mscn` (mean-subtracted
contrast-normalised coefficients), :func:`split_blocks` and :func:`over_strips` are shared with NIQE
(:mod:`iqa_adapter.metrics.niqe`).

Memory and speed: a metric's intermediate maps are several times the size of its input, so no metric
works on a whole batch at once. :func:`over_strips` cuts the work into steps of at most
:data:`PIXELS_PER_STEP` pixels: groups of whole images, or horizontal strips of one larger image, read with
the neighbouring rows their filters need, so that the scores are those of the whole-image computation. A
step never holds less than one strip of the metric's smallest height (one row, or one row of blocks or
patches, plus the halo) of one image. Each metric's docstring states its working memory per pixel of a
step (measured with float32 images; twice that for float64, except NIQE, which computes in float64
anyway). Small steps are also faster than whole images: their maps stay in the processor's caches.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import QualityMetric
from .registry import register_metric

# MATLAB's rgb2gray: the first row of the inverse of the NTSC RGB -> YIQ matrix (ITU-R BT.601's 0.299, 0.587,
# 0.114 to within 7e-5)
LUMA_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
SECOND_DIFFERENCE = [1.0, -2.0, 1.0]  # Immerkaer's 3x3 kernel is its outer product with itself
JPEG_BLOCK = 8
MSCN_HALO = 3  # rows the 7x7 MSCN window (:func:`mscn`) reads on each side of a pixel
PIXELS_PER_STEP = 2**18  # pixels a metric reads in one step (a 512x512 image); tests shrink it


# ---------------------------------------------------------------- shared helpers


def luma(images: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Luma of RGB images (N, 3, H, W) with MATLAB's ``rgb2gray`` weights (:data:`LUMA_WEIGHTS`), as (N, 1, H, W)
    on the same scale.

    Computed in ``dtype`` (default: the images'), channel by channel: no (N, 3, H, W) temporary.
    """
    red, green, blue = (images[:, channel : channel + 1].to(dtype or images.dtype) for channel in range(3))
    grey = red * LUMA_WEIGHTS[0]
    return grey.add_(green, alpha=LUMA_WEIGHTS[1]).add_(blue, alpha=LUMA_WEIGHTS[2])


def require_size(images: torch.Tensor, min_size: tuple[int, int], metric: str, reason: str) -> None:
    """Raise a ValueError naming the metric when images are smaller than ``min_size`` (height, width)."""
    height, width = images.shape[-2:]
    min_height, min_width = min_size
    if height < min_height or width < min_width:
        raise ValueError(
            f"{metric}: images must be at least {min_height}x{min_width} pixels ({reason}), got "
            f"{height}x{width}; upscale small images first"
        )


def filter2d(gray: torch.Tensor, kernel: torch.Tensor | tuple, padding: str = "valid") -> torch.Tensor:
    """Correlate single-channel images (N, 1, H, W) with a 2-D kernel.

    ``padding="valid"`` keeps only the positions where the kernel fits inside the image;
    ``padding="replicate"`` repeats the border pixels and keeps the size (MATLAB ``imfilter(..., 'replicate')``).
    """
    kernel = torch.as_tensor(kernel, dtype=torch.float64)
    rows, cols = kernel.shape
    if padding == "replicate":
        gray = F.pad(gray, ((cols - 1) // 2, cols // 2, (rows - 1) // 2, rows // 2), mode="replicate")
    elif padding != "valid":
        raise ValueError(f"padding must be 'valid' or 'replicate', got {padding!r}")
    # a sum of shifted slices: torch's convolution of one channel in float64 builds an im2col buffer of
    # rows x cols values per pixel, and is several times slower
    height, width = gray.shape[-2] - rows + 1, gray.shape[-1] - cols + 1
    out = torch.zeros_like(gray[..., :height, :width])
    for (row, col), weight in zip(itertools.product(range(rows), range(cols)), kernel.flatten().tolist()):
        if weight != 0:
            out.add_(gray[..., row : row + height, col : col + width], alpha=weight)
    return out


def gaussian_profile(size: int = 7, sigma: float = 7 / 6) -> torch.Tensor:
    """Normalised 1-D Gaussian, float64: its outer product with itself is MATLAB ``fspecial('gaussian', size,
    sigma)``."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-(offsets**2) / (2 * sigma**2))
    return profile / profile.sum()


def mscn(gray: torch.Tensor, c: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-subtracted contrast-normalised (MSCN) coefficients of grey images (N, 1, H, W) in [0, 255].

    ``(I - mu) / (sigma + c)`` with the local mean ``mu`` and local standard deviation ``sigma`` weighted by a
    7x7 Gaussian window (sigma 7/6, replicated borders), as in the reference code of NIQE (Mittal et al. 2013)
    and PIQE (Venkatanath et al. 2015). Returns ``(coefficients, sigma)``, both (N, 1, H, W).
    """
    both = gaussian_replicate(torch.cat([gray, gray * gray], dim=1))  # the window is separable: 2 x 7 taps
    mu, second_moment = both[:, :1], both[:, 1:]
    sigma = (second_moment - mu * mu).abs().sqrt()
    return (gray - mu) / (sigma + c), sigma


def gaussian_replicate(maps: torch.Tensor, size: int = 7, sigma: float = 7 / 6) -> torch.Tensor:
    """Each channel of ``maps`` (N, C, H, W) filtered with the 2-D Gaussian window of :func:`gaussian_profile`,
    replicated borders (MATLAB ``imfilter(..., fspecial('gaussian', 7, 7/6), 'replicate')``), as two 1-D passes
    of shifted slices: no im2col buffer (torch's float64 convolution builds one of 49 values per pixel) and 14
    instead of 49 multiply-adds per pixel."""
    taps = gaussian_profile(size, sigma).tolist()
    before, after = (size - 1) // 2, size // 2
    for dim in (-2, -1):
        pads = (0, 0, before, after) if dim == -2 else (before, after, 0, 0)
        maps = weighted_slices(F.pad(maps, pads, mode="replicate"), dim, taps, maps.shape[dim])
    return maps


def weighted_slices(padded: torch.Tensor, dim: int, taps: list[float], length: int, stride: int = 1) -> torch.Tensor:
    """``sum_k taps[k] * padded[..., k + stride * i, ...]`` for ``i < length`` along ``dim``: a 1-D filter (with
    ``stride``, a filter and a subsampling) as weighted, shifted slices, without the im2col buffer of a float64
    convolution."""
    index = [slice(None)] * padded.dim()

    def shifted(offset: int) -> torch.Tensor:
        index[dim] = slice(offset, offset + stride * (length - 1) + 1, stride)
        return padded[tuple(index)]

    out = shifted(0) * taps[0]
    for offset, tap in enumerate(taps[1:], start=1):
        out.add_(shifted(offset), alpha=tap)
    return out


def split_blocks(gray: torch.Tensor, size: int) -> torch.Tensor:
    """Non-overlapping ``size`` x ``size`` blocks of images (N, 1, H, W), as (N, blocks, size, size).

    Rows and columns past the last whole block (bottom and right) are dropped; blocks are in row-major order.
    The result is contiguous whatever the number of block rows, so reductions over blocks round alike.
    """
    count, _, height, width = gray.shape
    rows, cols = height // size, width // size
    gray = gray[:, 0, : rows * size, : cols * size]
    blocks = gray.reshape(count, rows, size, cols, size).transpose(2, 3)
    return blocks.reshape(count, rows * cols, size, size).contiguous()


def _mirror_pad(gray: torch.Tensor, bottom: int, right: int) -> torch.Tensor:
    """Images (N, 1, H, W) padded at the bottom and right by mirroring with the edge repeated (MATLAB's
    ``padarray(..., 'symmetric', 'post')``); each pad at most the image's side."""
    if bottom:
        gray = torch.cat([gray, gray[..., gray.shape[-2] - bottom :, :].flip(-2)], dim=-2)
    if right:
        gray = torch.cat([gray, gray[..., gray.shape[-1] - right :].flip(-1)], dim=-1)
    return gray


def _sqrt_or_zero(value: torch.Tensor) -> torch.Tensor:
    """Square root whose gradient at 0 is 0, not infinite, so flat images do not give NaN gradients."""
    positive = value > 0
    return torch.where(positive, torch.where(positive, value, 1.0).sqrt(), 0.0)


# ---------------------------------------------------------------- working in steps


@dataclass(frozen=True)
class Strip:
    """One step of :func:`strips`: rows ``top:bottom`` of the images ``batch`` of a batch, which it reads as
    rows ``start:stop``, with the halo rows around them that the image has."""

    batch: slice
    top: int
    bottom: int
    start: int
    stop: int

    def read(self, images: torch.Tensor) -> torch.Tensor:
        """The rows the strip reads, a view of ``images`` (N, C, H, W)."""
        return images[self.batch, :, self.start : self.stop]

    @property
    def own(self) -> slice:
        """The strip's own rows ``top:bottom``, counted within the rows it reads."""
        return slice(self.top - self.start, self.bottom - self.start)


def strips(
    images: torch.Tensor, halo: tuple[int, int] = (0, 0), multiple: int = 1, rows: int | None = None
) -> Iterator[Strip]:
    """Cut the work on a batch (N, C, H, W) into steps that read at most :data:`PIXELS_PER_STEP` pixels.

    The strips own rows ``0:rows`` (default: all H rows) of every image, and each reads ``halo`` = (above,
    below) rows more, as far as the image goes: at its top and bottom the computation pads as it would on
    the whole image. Whole images are grouped when one fits in a step; larger ones are cut into strips of
    near-equal height, in multiples of ``multiple`` rows (``rows`` is a multiple of it), of at least
    ``multiple`` rows whatever the budget. An empty batch gives one empty step, so results keep their shape.
    """
    count, _, height, width = images.shape
    rows = height if rows is None else rows
    above, below = halo
    if height * width <= PIXELS_PER_STEP or not count:
        group = max(1, PIXELS_PER_STEP // (height * width))
        for first in range(0, max(count, 1), group):
            yield Strip(slice(first, first + group), 0, rows, 0, height)
        return
    units = rows // multiple
    units_per_step = max(1, (PIXELS_PER_STEP // width - above - below) // multiple)
    steps = math.ceil(units / units_per_step)
    bounds = [multiple * (units * step // steps) for step in range(steps + 1)]
    for index in range(count):
        for top, bottom in itertools.pairwise(bounds):
            yield Strip(slice(index, index + 1), top, bottom, max(top - above, 0), min(bottom + below, height))


def over_strips(
    images: torch.Tensor,
    step: Callable[[torch.Tensor, Strip], torch.Tensor],
    combine: Callable[[list[torch.Tensor]], torch.Tensor] = sum,
    **layout,
) -> torch.Tensor:
    """Run ``step(rows read, strip)`` on the steps of :func:`strips` (``layout``: its halo, multiple, rows).

    ``step`` returns a tensor with one row per image of its strip; the results of the strips of the same
    images are combined by ``combine`` (default: summed), then concatenated along the batch.
    """
    by_images = itertools.groupby(strips(images, **layout), key=lambda strip: strip.batch)
    return torch.cat([combine([step(strip.read(images), strip) for strip in group]) for _, group in by_images])


def _valid_mean(images: torch.Tensor, response: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Mean over the (H - 2) x (W - 2) positions of ``response(luma)``, a 3x3 filter without padding, (N,).

    Strips own the output rows and read the 2 rows below them that the filter needs.
    """
    height, width = images.shape[-2:]
    total = over_strips(images, lambda rows, _: response(luma(rows)).sum(dim=(1, 2, 3)), halo=(0, 2), rows=height - 2)
    return total / ((height - 2) * (width - 2))


def _pixel_moments(
    images: torch.Tensor, values: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance over the pixels of each image of the maps ``values(images)`` (N, C, H, W).

    Returned as (N, C) float64. Each strip's mean and variance are computed in two passes in the maps' dtype
    (the mean, then the mean squared deviation from it); those of the strips of an image are merged in
    float64 by the law of total variance (the pixel-weighted mean of the strips' variances plus the
    variance of their means).
    """

    def moments(rows: torch.Tensor, _) -> torch.Tensor:
        maps = values(rows)
        mean = maps.mean(dim=(-2, -1), keepdim=True)
        variance = (maps - mean).square().mean(dim=(-2, -1))
        mean = mean[..., 0, 0]
        pixels = torch.full_like(mean, rows.shape[-2] * rows.shape[-1])
        return torch.stack([pixels, mean, variance], dim=-1).double()  # (N, C, 3)

    def merge(parts: list[torch.Tensor]) -> torch.Tensor:
        pixels, mean, variance = torch.stack(parts).unbind(dim=-1)  # each (strips, N, C)
        total = pixels.sum(dim=0)
        grand_mean = (pixels * mean).sum(dim=0) / total
        spread = (pixels * (variance + (mean - grand_mean).square())).sum(dim=0) / total
        return torch.stack([total, grand_mean, spread], dim=-1)

    _, mean, variance = over_strips(images, moments, combine=merge).unbind(dim=-1)
    return mean, variance


# ---------------------------------------------------------------- metrics


@register_metric
class PIQE(QualityMetric):
    """PIQE: blockwise perception-based distortion score, parameter-free (0 best, 100 worst).

    Venkatanath N., Praneeth D., Maruthi Chandrasekhar Bh., Channappayya S. S., Medasani S. S., "Blind image
    quality evaluation using perception based features", NCC 2015. Computed as MATLAB's ``piqe`` computes it
    on an 8-bit image (the published numbers are MATLAB's; pyiqa and pypiqe follow it too):

    1. Grey levels by ``rgb2gray`` rounded to integers, as for a uint8 image; the image is padded at the bottom
       and right to a multiple of 16 pixels by mirroring (``padarray(..., 'symmetric', 'post')``) and stretched:
       ``Y = round(255 * Y / max(Y))``. It must be at least 16x16.
    2. MSCN coefficients (:func:`mscn`, c = 1), split into 16x16 blocks.
    3. A block is *active* when the sample variance ``v`` of its coefficients exceeds 0.1. Active blocks are
       tested for two distortions:

       - *noticeable distortion*: some segment of 6 consecutive pixels on one of the 4 block edges has a
         sample standard deviation below 0.1 (blocking, ringing, flat patches next to structure);
       - *noise*: ``sigma > 2 beta`` with ``sigma = sqrt(v)``, ``beta = |sigma - r| / max(sigma, r)`` and
         ``r`` the ratio of the standard deviations of the block's centre and surround. The centre is the two
         middle columns (7 and 8, from 0). MATLAB deletes column 7 and then column 8 *of what is left*, so
         its surround is every column but 7 and 9: column 8 stays in it. ``surround="matlab"`` (default)
         does the same; ``surround="paper"`` takes the 14 columns outside the centre, as the paper describes.

    4. ``PIQE = 100 (sum over active blocks of [noticeable] (1 - v) + [noisy] v + 1) / (active blocks + 1)``.

    A flat image has no active block and scores 100. Thresholding makes the score non-differentiable.
    Memory: besides the input, about 90 bytes per pixel of a step (:data:`PIXELS_PER_STEP`; a step for
    ``max(Y)``, then steps of whole block rows, at least one block row, 3 rows below it and 14 above, which
    the mirrored bottom rows need).
    """

    name = "piqe"
    higher_is_better = False
    score_range = (0.0, 100.0)
    differentiable = False
    min_size = (16, 16)

    block_size = 16
    activity_threshold = 0.1
    impaired_threshold = 0.1
    segment_length = 6
    SURROUNDS = ("matlab", "paper")

    def __init__(self, surround: str = "matlab") -> None:
        super().__init__()
        if surround not in self.SURROUNDS:
            raise ValueError(f"piqe: surround must be one of {', '.join(self.SURROUNDS)}, got {surround!r}")
        middle = self.block_size // 2
        dropped = (middle - 1, middle + 1) if surround == "matlab" else (middle - 1, middle)
        self.surround = surround
        self.surround_columns = [column for column in range(self.block_size) if column not in dropped]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.block_size
        require_size(images, self.min_size, self.name, f"one {size}x{size} block")
        height, width = images.shape[-2:]
        padded_height, padded_width = (-(-side // size) * size for side in (height, width))

        def grey(rows: torch.Tensor) -> torch.Tensor:
            return torch.round(255 * luma(rows))  # rgb2gray of a uint8 image

        peak = over_strips(
            images, lambda rows, _: grey(rows).amax(dim=(1, 2, 3)), combine=lambda parts: torch.stack(parts).amax(dim=0)
        )
        peak = peak.clamp_min(1.0).view(-1, 1, 1, 1)

        def blocks(rows: torch.Tensor, strip: Strip) -> torch.Tensor:
            bottom = padded_height - height if strip.stop == height else 0
            padded = _mirror_pad(grey(rows), bottom, padded_width - width)
            coefficients, _ = mscn(torch.round(255 * padded / peak[strip.batch]))
            return self._block_scores(split_blocks(coefficients[..., strip.own, :], size))

        # the last strip mirrors up to 15 rows, read from up to 2 * 15 - 16 = 14 rows above the rows it owns
        above = max(MSCN_HALO, size - 2)
        scores = over_strips(
            images,
            blocks,
            combine=functools.partial(torch.cat, dim=-1),
            halo=(above, MSCN_HALO),
            multiple=size,
            rows=padded_height,
        )
        distortion, active = scores.unbind(dim=1)
        return 100 * (distortion.sum(dim=1) + 1) / (active.sum(dim=1) + 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, surround={self.surround!r}"

    def _block_scores(self, blocks: torch.Tensor) -> torch.Tensor:
        """Distortion and activity (1 or 0) of blocks of MSCN coefficients (N, blocks, 16, 16), as (N, 2, blocks)."""
        variance = blocks.var(dim=(-2, -1))
        active = variance > self.activity_threshold
        distortion = (self._noticeable(blocks) * (1 - variance) + self._noisy(blocks, variance) * variance) * active
        return torch.stack([distortion, active.to(distortion.dtype)], dim=1)

    def _noticeable(self, blocks: torch.Tensor) -> torch.Tensor:
        """Blocks with a low-variance segment on one of their 4 edges (N, blocks), boolean."""
        edges = torch.stack([blocks[..., 0, :], blocks[..., -1, :], blocks[..., :, 0], blocks[..., :, -1]], dim=-2)
        segments = edges.unfold(-1, self.segment_length, 1)  # (N, blocks, 4 edges, segments, length)
        return (segments.std(dim=-1) < self.impaired_threshold).flatten(-2).any(dim=-1)

    def _noisy(self, blocks: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """Blocks that pass the noise criterion sigma > 2 beta (N, blocks), boolean."""
        middle = self.block_size // 2
        centre = blocks[..., middle - 1 : middle + 1]
        surround = blocks[..., self.surround_columns]
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
    Needs images of at least 3x3 pixels. Memory: besides the input, about 100 bytes per pixel of a step
    (:data:`PIXELS_PER_STEP`).
    """

    name = "sharpness"
    higher_is_better = True
    score_range = (0.0, 16.0)
    differentiable = True
    min_size = (3, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        require_size(images, self.min_size, self.name, "one 3x3 Laplacian window")
        return _valid_mean(images, lambda gray: filter2d(gray, LAPLACIAN).square())


@register_metric
class Noise(QualityMetric):
    """Noise: Immerkaer's fast estimate of the standard deviation of Gaussian noise (grey levels), lower is better.

    J. Immerkaer, "Fast noise variance estimation", Computer Vision and Image Understanding 64(2), 1996:
    ``sigma = sqrt(pi / 2) / (6 (W - 2)(H - 2)) * sum |Y * N|`` with the luma ``Y`` in [0, 255] and
    ``N = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]`` (the difference of two Laplacians, blind to linear ramps),
    summed over the (H-2) x (W-2) positions where the kernel fits. Strong texture also raises the estimate.
    Needs images of at least 3x3 pixels. Memory: besides the input, about 100 bytes per pixel of a step
    (:data:`PIXELS_PER_STEP`).
    """

    name = "noise"
    higher_is_better = False
    score_range = (0.0, 20.0)
    differentiable = True
    min_size = (3, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        require_size(images, self.min_size, self.name, "one 3x3 noise-estimation window")
        response = _valid_mean(images, _immerkaer_response)
        return math.sqrt(math.pi / 2) / 6 * 255 * response


def _immerkaer_response(gray: torch.Tensor) -> torch.Tensor:
    """``|N * gray|`` at the positions where Immerkaer's 3x3 kernel fits, as two 1-D second differences."""
    height, width = gray.shape[-2:]
    rows = weighted_slices(gray, -1, SECOND_DIFFERENCE, width - 2)
    return weighted_slices(rows, -2, SECOND_DIFFERENCE, height - 2).abs_()


@register_metric
class Blockiness(QualityMetric):
    """Blockiness: luma steps across the 8x8 JPEG grid relative to steps inside blocks (about 1 = none), lower is better.

    With the luma ``Y`` in [0, 255] and the absolute differences between horizontally and vertically adjacent
    pixels, ``B`` is the mean of those that cross a block boundary (between pixel 8k - 1 and 8k, grid anchored
    at the top-left corner as in JPEG) and ``A`` the mean of all others; both directions pooled:
    ``blockiness = (B + 1) / (A + 1)``. The 1 (one grey level) keeps flat images at 1. An image without
    blocking scores about 1: a little below when its content happens to change less across the grid than
    inside blocks (0.975 on a standard photograph), down to ``1 / (A + 1)`` > 0 in theory; JPEG blocking
    raises it above 1. The boundary
    differences ``B`` are those of Wang, Sheikh and Bovik, "No-reference perceptual quality assessment of
    JPEG compressed images", ICIP 2002, here simply normalised by the activity inside blocks. Needs images of
    at least 9x9 pixels (one block boundary each way). Memory: besides the input, about 20 bytes per pixel
    of a step (:data:`PIXELS_PER_STEP`).
    """

    name = "blockiness"
    higher_is_better = False
    score_range = (0.0, 3.0)
    differentiable = True
    min_size = (JPEG_BLOCK + 1, JPEG_BLOCK + 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        require_size(images, self.min_size, self.name, "one 8x8 block boundary each way")
        height, width = images.shape[-2:]
        on_column_grid = torch.arange(1, width, device=images.device) % JPEG_BLOCK == 0

        def sums(rows: torch.Tensor, strip: Strip) -> torch.Tensor:
            """Sums (N, 2) of the differences on the grid and of all differences, from each pixel of the
            strip's own rows to its right and its lower neighbour."""
            gray = 255 * luma(rows)[:, 0]
            own = gray[:, strip.own]
            across_columns = (own[..., :, 1:] - own[..., :, :-1]).abs()  # (N, rows, W-1)
            across_rows = (gray[..., 1:, :] - gray[..., :-1, :]).abs()  # (N, rows or rows - 1 at the bottom, W)
            on_row_grid = (
                torch.arange(strip.top + 1, strip.top + 1 + across_rows.shape[-2], device=images.device) % JPEG_BLOCK
                == 0
            )
            boundary = across_columns[..., on_column_grid].sum(dim=(-2, -1)) + across_rows[..., on_row_grid, :].sum(
                dim=(-2, -1)
            )
            total = across_columns.sum(dim=(-2, -1)) + across_rows.sum(dim=(-2, -1))
            return torch.stack([boundary, total], dim=-1)

        boundary_sum, total_sum = over_strips(images, sums, halo=(0, 1)).unbind(dim=-1)
        boundary_count = int(on_column_grid.sum()) * height + (height - 1) // JPEG_BLOCK * width
        inner_count = height * (width - 1) + (height - 1) * width - boundary_count
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
    Memory: besides the input, about 30 bytes per pixel of a step (:data:`PIXELS_PER_STEP`).
    """

    name = "colorfulness"
    higher_is_better = True
    score_range = (0.0, 150.0)
    differentiable = True
    min_size = (1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        require_size(images, self.min_size, self.name, "one pixel")
        mean, variance = _pixel_moments(images, self._opponents)
        spread, offset = variance.sum(dim=-1), mean.square().sum(dim=-1)
        return (_sqrt_or_zero(spread) + 0.3 * _sqrt_or_zero(offset)).to(images.dtype)

    @staticmethod
    def _opponents(images: torch.Tensor) -> torch.Tensor:
        """The opponent colours ``rg`` and ``yb`` in [-255, 255] of RGB images (N, 3, H, W), as (N, 2, H, W)."""
        red, green, blue = (255 * images).unbind(dim=1)
        return torch.stack([red - green, (red + green) / 2 - blue], dim=1)


@register_metric
class Contrast(QualityMetric):
    """Contrast: RMS contrast, the standard deviation of the luma in [0, 1], higher is more contrasted.

    ``C = sqrt(mean((Y - mean(Y))^2))`` (population form); E. Peli, "Contrast in complex images", JOSA A 7(10),
    1990. Bounded by 0.5 (half black, half white). Memory: besides the input, about 25 bytes per pixel of a
    step (:data:`PIXELS_PER_STEP`).
    """

    name = "contrast"
    higher_is_better = True
    score_range = (0.0, 0.5)
    differentiable = True
    min_size = (1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        require_size(images, self.min_size, self.name, "one pixel")
        _, variance = _pixel_moments(images, luma)
        return _sqrt_or_zero(variance[:, 0]).to(images.dtype)
