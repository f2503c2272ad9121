"""Reading images: the one place that opens image files (or encoded bytes) and converts them to RGB.

* :func:`open_image` decodes a file or bytes completely (so a truncated file fails here, not later) and
  turns every failure (missing file, a folder, an empty or truncated file, not an image, more pixels than
  ``max_pixels``) into an :class:`ImageReadError` that names the file and the problem.
* :func:`to_rgb` gives an 8-bit RGB image for code that works on 8-bit images (diffusers pipelines, the
  training transform). :func:`rgb_array` gives float32 RGB in [0, 1] at the image's full precision (for
  metrics).

PIL's ``convert("RGB")`` clips 16-bit grey images (mode ``I;16``, ``I``) to 0/255; here they are scaled
(``v / 65535``), and float images (mode ``F``) are read as values in [0, 1]. 48-bit RGB PNGs are decoded by
PIL to 8 bits per channel. Palette, grey, CMYK and YCbCr images convert as PIL converts them; an alpha
channel is dropped (as diffusers and pyiqa do).
"""

from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485
"""Largest image read by default (PIL's decompression-bomb limit: 1024 * 1024 * 1024 // 4 // 3 pixels)."""
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
HIGH_DEPTH_MODES = (*SIXTEEN_BIT_MODES, "F")
SIXTEEN_BIT_MAX = 65535.0


class ImageReadError(ValueError):
    """An image that cannot be read; the message names the file and the problem."""


def open_image(
    source: str | os.PathLike | bytes, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """A fully decoded PIL image, in its own mode, from a path or encoded bytes.

    ``name`` is how messages call the image (default: the path). ``max_pixels`` refuses larger images
    before decoding them (``None``: no limit).
    """
    label = name or (f"image {str(source)!r}" if not isinstance(source, bytes) else "the image data")
    if not isinstance(source, bytes):
        path = Path(source)
        if path.is_dir():
            raise ImageReadError(f"{label} is a folder, not an image file")
        if not path.is_file():
            raise ImageReadError(f"{label} does not exist")
        if path.stat().st_size == 0:
            raise ImageReadError(f"{label} is an empty file")
        handle = open(path, "rb")  # noqa: SIM115 (closed by the with-block below, as the BytesIO branch)
    else:
        if not source:
            raise ImageReadError(f"{label} is empty (0 bytes)")
        handle = io.BytesIO(source)
    with handle, _pil_limit_lifted():  # the limit is checked here, with a message that says how to raise it
        try:
            with Image.open(handle) as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageReadError(
                        f"{label} has {width}x{height} = {width * height:,} pixels, more than the limit of "
                        f"{max_pixels:,}; raise the limit (--max-pixels) to read it"
                    )
                image.load()
                return image
        except ImageReadError:
            raise
        except UnidentifiedImageError:
            raise ImageReadError(f"{label} is not an image, or in a format PIL cannot read") from None
        except (OSError, SyntaxError, ValueError, EOFError) as error:  # PIL: truncated or corrupt data
            raise ImageReadError(f"{label} cannot be decoded ({error}): truncated or corrupt") from None


@contextmanager
def _pil_limit_lifted():
    """PIL's own decompression-bomb check off (warning and error), for :func:`open_image`'s ``max_pixels``."""
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def is_high_depth(image: Image.Image) -> bool:
    """Whether the image holds more than 8 bits per value (16-bit or 32-bit integer grey, or float)."""
    return image.mode in HIGH_DEPTH_MODES


def _grey_float(image: Image.Image) -> Image.Image:
    """A high-depth grey image as PIL mode ``F`` with values in [0, 1]."""
    grey = image.convert("F")
    if image.mode in SIXTEEN_BIT_MODES:
        grey = grey.point(lambda value: value / SIXTEEN_BIT_MAX)
    return grey


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB: 16-bit and float grey images are scaled and rounded, not clipped."""
    if image.mode == "RGB":
        return image
    if is_high_depth(image):
        values = np.clip(np.asarray(_grey_float(image), dtype=np.float32), 0.0, 1.0)
        grey = np.round(values * 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), mode="RGB")
    return image.convert("RGB")


def resized(image: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """``image`` resized to (width, height) with bicubic filtering, at its own precision (None: unchanged)."""
    if size is None or image.size == tuple(size):
        return image
    source = _grey_float(image) if is_high_depth(image) else image if image.mode in ("RGB", "L") else to_rgb(image)
    return source.resize(tuple(size), Image.Resampling.BICUBIC)


def rgb_array(image: Image.Image) -> np.ndarray:
    """The image as float32 RGB (H, W, 3) in [0, 1], at full precision for 16-bit and float images."""
    if is_high_depth(image):
        values = np.clip(np.asarray(_grey_float(image), dtype=np.float32), 0.0, 1.0)
        return np.repeat(values[..., None], 3, axis=2)
    return np.asarray(to_rgb(image), dtype=np.float32) / 255


def rgb_tensor(image: Image.Image) -> torch.Tensor:
    """The image as a float32 tensor (3, H, W) in [0, 1] (see :func:`rgb_array`)."""
    return torch.from_numpy(rgb_array(image)).permute(2, 0, 1).contiguous()


def to_uint8_arrays(pixels: torch.Tensor) -> np.ndarray:
    """Images (N, 3, H, W) in [0, 1] as uint8 arrays (N, H, W, 3): clipped and rounded, as PIL stores them."""
    return _8bit_levels(pixels.detach().cpu()).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_pil_images(pixels: torch.Tensor) -> list[Image.Image]:
    """Images (N, 3, H, W) in [0, 1] as 8-bit RGB PIL images (see :func:`to_uint8_arrays`)."""
    return [Image.fromarray(np.ascontiguousarray(array)) for array in to_uint8_arrays(pixels)]


def to_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels`` in [0, 1] as an 8-bit image stores them: clipped and rounded to multiples of 1/255 (still float,
    in the input's dtype; the levels :func:`to_uint8_arrays` gives)."""
    return (_8bit_levels(pixels) / 255).to(pixels.dtype)


def _8bit_levels(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels`` in [0, 1] clipped and rounded to the levels 0-255, in at least float32 (half precision would round
    ``pixels * 255`` before ``round()`` does, a level off for a few percent of values)."""
    wide = pixels.to(torch.promote_types(pixels.dtype, torch.float32))
    return (wide.clamp(0, 1) * 255).round()


def read_rgb(
    source: str | os.PathLike | bytes, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """An image file as 8-bit RGB (:func:`open_image`, then :func:`to_rgb`)."""
    return to_rgb(open_image(source, name=name, max_pixels=max_pixels))
