"""KADID-10k-like image degradations, batched in torch and reproducible with a ``torch.Generator``.

:func:`distort` applies one degradation family at a strength ``level`` in [0, 1] (a scalar, or one level per
image): level 0 returns the images unchanged, level 1 is the strongest setting, clearly visible on 32-64 px
images. :func:`random_distortions` draws a family and a level per image, as the synthetic IQA datasets of
:mod:`iqa_adapter.loda.synthetic` do.

Images are (N, 3, H, W) float tensors in [0, 1] with H, W >= 8; outputs have the same shape, dtype and device,
clamped to [0, 1]. The random families (``motion_blur``, ``gaussian_noise``, ``impulse_noise``,
``saturation``, ``brightness``) draw their randomness from ``generator`` on the generator's own device and
move it to the images' device, so a CPU generator gives the same result for CPU and GPU images. Every family
but ``jpeg`` and ``quantization`` is differentiable in the images (the level only selects the parameters).
Each family's formula is in the docstring of its ``_family`` function below.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import to_uint8_arrays

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601
MIN_SIZE = 8

MAX_BLUR_SIGMA = 3.0  # pixels, gaussian_blur at level 1
MAX_MOTION_LENGTH = 15.0  # pixels, motion_blur at level 1
MAX_NOISE_SIGMA = 0.25  # gaussian_noise standard deviation at level 1
MAX_IMPULSE_FRACTION = 0.3  # impulse_noise: fraction of pixels replaced at level 1
JPEG_QUALITY_RANGE = (95, 2)  # JPEG quality just above level 0 and at level 1
MIN_CONTRAST_FACTOR = 0.15  # contrast: the image's deviation from its mean luma is scaled down to this
MAX_OVERSATURATION = 3.0  # saturation: the colour deviation from grey is scaled up to 1 + this at level 1
MAX_EXPOSURE_STOPS = 2.5  # brightness: exposure change in stops (factors of 2) at level 1
MAX_DOWNSAMPLE_FACTOR = 8.0  # downsample: down-up sampling factor at level 1
MAX_PIXEL_BLOCK = 8  # pixelate: block size in pixels at level 1
MIN_QUANTIZATION_BITS = 1.0  # quantization: bits per channel at level 1 (8 at level 0)


# ---------------------------------------------------------------- helpers


def _luma(images: torch.Tensor) -> torch.Tensor:
    weights = images.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, 1, 1), for broadcasting against images."""
    return values.view(-1, 1, 1, 1)


def _draw(generator: torch.Generator | None, device: torch.device, draw: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Random numbers from ``generator`` (drawn on its own device), moved to ``device``."""
    if generator is None:
        return draw(generator=None, device=device)
    return draw(generator=generator, device=generator.device).to(device)


def _random_signs(count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """+1 or -1 per image, with probability 1/2 each."""
    bits = _draw(generator, device, lambda **kw: torch.randint(0, 2, (count,), **kw))
    return bits.float() * 2 - 1


def _grouped_conv(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Correlate every image with its own 2-D kernel (N, kh, kw), same for the 3 channels, replicated borders."""
    count, channels, height, width = images.shape
    kh, kw = kernels.shape[-2:]
    padded = F.pad(
        images.reshape(1, count * channels, height, width), (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate"
    )
    weight = kernels.repeat_interleave(channels, dim=0)[:, None]
    return F.conv2d(padded, weight, groups=count * channels).reshape(count, channels, height, width)


def _apply_by_group(
    images: torch.Tensor, keys: list, transform: Callable[[torch.Tensor, object], torch.Tensor]
) -> torch.Tensor:
    """``transform(images_with_that_key, key)`` once per distinct key; images come back in their order."""
    out = torch.empty_like(images)
    for key in dict.fromkeys(keys):
        index = torch.tensor([i for i, k in enumerate(keys) if k == key], device=images.device)
        out[index] = transform(images[index], key)
    return out


# ---------------------------------------------------------------- families


def _gaussian_blur(images: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Separable Gaussian blur with ``sigma = 3 px * level``, truncated at ``ceil(3 sigma)`` (replicated
    borders)."""
    sigma = (level * MAX_BLUR_SIGMA).clamp_min(1e-6)
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    profile = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    profile = profile * (offsets[None].abs() <= torch.ceil(3 * sigma[:, None]))
    profile = profile / profile.sum(dim=1, keepdim=True)
    return _grouped_conv(_grouped_conv(images, profile[:, None, :]), profile[:, :, None])


def _motion_blur(images: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Averaging along a line segment of length ``15 px * level`` through the centre, at an angle uniform
    in [0, pi) per image (the segment is rasterised with bilinear weights)."""
    count = images.shape[0]
    length = level * MAX_MOTION_LENGTH
    angle = _draw(generator, images.device, lambda **kw: torch.rand(count, **kw)).to(images.dtype) * math.pi
    radius = max(1, math.ceil(float(length.max()) / 2))
    size = 2 * radius + 1
    steps = 4 * size
    t = torch.linspace(-0.5, 0.5, steps, dtype=images.dtype, device=images.device)[None] * length[:, None]
    xs = t * torch.cos(angle)[:, None]  # (N, steps), offsets from the kernel centre
    ys = t * torch.sin(angle)[:, None]
    grid = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    wx = (1 - (grid[None, None, :] - xs[..., None]).abs()).clamp_min(0)  # (N, steps, size)
    wy = (1 - (grid[None, None, :] - ys[..., None]).abs()).clamp_min(0)
    kernels = torch.einsum("nsy,nsx->nyx", wy, wx)
    kernels = kernels / kernels.sum(dim=(1, 2), keepdim=True)
    return _grouped_conv(images, kernels)


def _gaussian_noise(images: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Additive white Gaussian noise, independent per pixel and channel, ``sigma = 0.25 * level``."""
    noise = _draw(generator, images.device, lambda **kw: torch.randn(images.shape, **kw)).to(images.dtype)
    return images + noise * _per_image(level * MAX_NOISE_SIGMA)


def _impulse_noise(images: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Salt-and-pepper noise: a fraction ``0.3 * level`` of the pixels become black or white (all channels)."""
    count, _, height, width = images.shape
    hit, salt = _draw(generator, images.device, lambda **kw: torch.rand(2, count, 1, height, width, **kw))
    replaced = hit < _per_image(level * MAX_IMPULSE_FRACTION)
    return torch.where(replaced, (salt < 0.5).to(images.dtype), images)


def _jpeg(images: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A real JPEG round trip through PIL (4:2:0 chroma subsampling) at quality ``round(95 - 93 * level)``
    (95 just above level 0, 2 at level 1); the images are rounded to 8 bits first. Not differentiable."""
    best, worst = JPEG_QUALITY_RANGE
    pixels = to_uint8_arrays(images)
    decoded = []
    for array, value in zip(pixels, level.tolist()):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=int(round(best - (best - worst) * value)))
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return out.to(device=images.device, dtype=images.dtype) / 255


def _contrast(images: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Contrast reduction towards the image's mean luma ``m``: ``m + (x - m) * (1 - 0.85 * level)``."""
    mean = _luma(images).mean(dim=(2, 3), keepdim=True)
    factor = 1 - (1 - MIN_CONTRAST_FACTOR) * level
    return mean + (images - mean) * _per_image(factor)


def _saturation(images: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Colour saturation change around the pixel's luma ``Y``: ``Y + (x - Y) * s``; per image at random,
    desaturation ``s = 1 - level`` (grey at level 1) or oversaturation ``s = 1 + 3 * level``."""
    signs = _random_signs(images.shape[0], generator, images.device).to(images.dtype)
    factor = torch.where(signs < 0, 1 - level, 1 + MAX_OVERSATURATION * level)
    grey = _luma(images)
    return grey + (images - grey) * _per_image(factor)


def _brightness(images: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Exposure change ``x * 2 ** (+-2.5 * level)``, over- or under-exposed per image at random (clipped
    highlights when over-exposed)."""
    signs = _random_signs(images.shape[0], generator, images.device).to(images.dtype)
    return images * _per_image(torch.exp2(signs * MAX_EXPOSURE_STOPS * level))


def _downsample(images: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Down-up sampling: antialiased bilinear downscaling by ``f = 1 + 7 * level``, then bilinear upscaling
    back to the original size."""
    height, width = images.shape[-2:]
    factors = (1 + (MAX_DOWNSAMPLE_FACTOR - 1) * level).tolist()
    sizes = [(max(1, round(height / f)), max(1, round(width / f))) for f in factors]

    def down_up(group: torch.Tensor, size) -> torch.Tensor:
        small = F.interpolate(group, size=size, mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)

    return _apply_by_group(images, sizes, down_up)


def _pixelate(images: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Pixelation: the mean colour of blocks of ``b = 1 + round(7 * level)`` pixels, repeated over each block."""
    height, width = images.shape[-2:]
    blocks = [1 + round((MAX_PIXEL_BLOCK - 1) * value) for value in level.tolist()]

    def pixelate(group: torch.Tensor, block: int) -> torch.Tensor:
        means = F.adaptive_avg_pool2d(group, (math.ceil(height / block), math.ceil(width / block)))
        return F.interpolate(means, size=(height, width), mode="nearest")

    return _apply_by_group(images, blocks, pixelate)


def _quantization(images: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform quantisation of each channel to ``L = round(2 ** (8 - 7 * level))`` levels (256 to 2):
    ``round(x * (L - 1)) / (L - 1)``. Not differentiable."""
    steps = torch.round(torch.exp2(8 - (8 - MIN_QUANTIZATION_BITS) * level)) - 1
    steps = _per_image(steps)
    return torch.round(images * steps) / steps


_FAMILY_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    "gaussian_blur": _gaussian_blur,
    "motion_blur": _motion_blur,
    "gaussian_noise": _gaussian_noise,
    "impulse_noise": _impulse_noise,
    "jpeg": _jpeg,
    "contrast": _contrast,
    "saturation": _saturation,
    "brightness": _brightness,
    "downsample": _downsample,
    "pixelate": _pixelate,
    "quantization": _quantization,
}
FAMILIES: tuple[str, ...] = tuple(_FAMILY_FUNCTIONS)
# KADID-10k's distortion types, with down-up sampling as a blur (a low-pass filter) and quantisation of each channel
# as a colour distortion (KADID's "color quantization"): a judge that confuses families of one group has still seen
# the kind of damage
FAMILY_GROUPS: dict[str, tuple[str, ...]] = {
    "blur": ("gaussian_blur", "motion_blur", "downsample"),
    "noise": ("gaussian_noise", "impulse_noise"),
    "compression": ("jpeg",),
    "colour": ("saturation", "quantization"),
    "brightness": ("brightness",),
    "contrast": ("contrast",),
    "spatial": ("pixelate",),
}
FAMILY_GROUP = {family: group for group, families in FAMILY_GROUPS.items() for family in families}


# ---------------------------------------------------------------- public API


def _check_family(family: str) -> None:
    if family not in _FAMILY_FUNCTIONS:
        raise ValueError(f"unknown distortion family {family!r}; valid families: {', '.join(FAMILIES)}")


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"distort: expected images of shape (N, 3, H, W), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"distort: expected float images in [0, 1], got {images.dtype}; divide uint8 images by 255")
    if min(images.shape[-2:]) < MIN_SIZE:
        raise ValueError(
            f"distort: images must be at least {MIN_SIZE}x{MIN_SIZE} pixels, got {tuple(images.shape[-2:])}"
        )


def _check_levels(level: float | torch.Tensor, count: int, device: torch.device) -> torch.Tensor:
    """The level per image as a float32 (N,) tensor on ``device``, checked to lie in [0, 1]."""
    levels = torch.as_tensor(level, dtype=torch.float32).detach().to(device)
    if levels.ndim == 0:
        levels = levels.expand(count)
    elif levels.shape != (count,):
        raise ValueError(
            f"distort: level must be a number or a tensor of shape ({count},), one per image; "
            f"got shape {tuple(levels.shape)}"
        )
    if count and not bool(((levels >= 0) & (levels <= 1)).all()):
        raise ValueError(
            f"distort: levels must lie in [0, 1], got [{float(levels.min()):.3g}, {float(levels.max()):.3g}]"
        )
    return levels


def distort(
    images: torch.Tensor, family: str, level: float | torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Degrade ``images`` (N, 3, H, W) in [0, 1] with one distortion ``family`` at ``level`` in [0, 1].

    ``level`` is a number or one level per image (N,). Images at level 0 come back unchanged; the output is
    clamped to [0, 1] and keeps the input's shape, dtype and device. Random families draw from ``generator``
    (the global RNG when None), so a seeded generator makes the result reproducible.
    """
    _check_family(family)
    _check_images(images)
    levels = _check_levels(level, images.shape[0], images.device)
    if images.shape[0] == 0 or not bool((levels > 0).any()):
        return images.clone()
    work = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
    out = _FAMILY_FUNCTIONS[family](work, levels.to(work.dtype), generator).clamp(0, 1)
    out = torch.where(_per_image(levels > 0), out, work)
    return out.to(images.dtype)


def random_distortions(
    images: torch.Tensor, generator: torch.Generator, families: Sequence[str] = FAMILIES, clean_fraction: float = 0.0
) -> tuple[torch.Tensor, list[str | None], torch.Tensor]:
    """A random degradation per image: clean with probability ``clean_fraction``, otherwise a family drawn
    uniformly from ``families`` at a level ~ U(0, 1).

    Returns ``(distorted images, family per image (None when clean), level per image (N,))``; the levels
    are float32 on the images' device, 0 for clean images.
    """
    families = tuple(families)
    if not families:
        raise ValueError("random_distortions: give at least one family; valid families: " + ", ".join(FAMILIES))
    for family in families:
        _check_family(family)
    if not 0 <= clean_fraction <= 1:
        raise ValueError(f"random_distortions: clean_fraction must lie in [0, 1], got {clean_fraction}")
    _check_images(images)
    count = images.shape[0]
    draws = _draw(generator, images.device, lambda **kw: torch.rand(3, count, **kw))
    clean = draws[0] < clean_fraction
    choice = (draws[1] * len(families)).long().clamp_max(len(families) - 1)
    levels = torch.where(clean, 0.0, draws[2]).float()
    out = images.clone()
    for index, family in enumerate(families):
        selected = torch.nonzero(~clean & (choice == index)).flatten()
        if len(selected):
            out[selected] = distort(images[selected], family, levels[selected], generator)
    names = [None if is_clean else families[k] for is_clean, k in zip(clean.tolist(), choice.tolist())]
    return out, names, levels
