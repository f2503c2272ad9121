"""Synthetic IQA datasets made offline, KADIS-style: clean images x distortion families x levels, each
distorted image scored by a full-reference measure against its clean image (a pseudo-MOS).

The clean images are procedural by default (:func:`procedural_images`: colour gradients, gratings,
sharp-edged shapes and fine texture), so nothing is downloaded; any other clean images can be given instead
(``images=``, e.g. the rendered scenes of :mod:`iqa_adapter.toy.iqa_models`). The result is a dataset in the
meta-CSV convention of :mod:`iqa_adapter.loda.data`: ``meta.csv`` with ``img_name, ref_name, family, level,
mos`` (``mos`` = 100 x SSIM (or MS-SSIM) of the 8-bit distorted image against its reference, higher is
better), images under ``distorted/`` and the clean ones under ``reference/``. With ``include_clean`` every
clean image is also a row of its own (family ``clean``, level 0, ``mos`` = 100, the measure of an image
against itself), so that a model learns that no distortion is best. Splits by reference image then keep
every clean image's distortions (and the clean image) on one side. Every file is written atomically and
``meta.csv`` last, so a dataset with a ``meta.csv`` is complete.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..distortions import FAMILIES, distort
from ..images import to_8bit, to_pil_images
from ..io_utils import atomic_write
from ..metrics.full_reference import ms_ssim, ssim

MEASURES = ("ssim", "ms_ssim")


def procedural_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """``count`` varied clean images (count, 3, size, size) in [0, 1], reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator)

    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for _ in range(count):
        corners = rand(4, 3, 1, 1)  # a bilinear colour gradient between four corner colours
        image = (
            (1 - y) * (1 - x) * corners[0] + (1 - y) * x * corners[1] + y * (1 - x) * corners[2] + y * x * corners[3]
        )
        for _ in range(2):  # gratings of random frequency, orientation and colour
            angle, frequency, phase = rand(3) * torch.tensor([math.pi, 12.0, 2 * math.pi])
            wave = torch.sin((x * torch.cos(angle) + y * torch.sin(angle)) * (2 + frequency) * math.pi + phase)
            image = image + 0.15 * wave * (rand(3, 1, 1) - 0.5) * 2
        for _ in range(3):  # sharp-edged ellipses and rectangles
            cx, cy, rx, ry = rand(4) * torch.tensor([1.0, 1.0, 0.3, 0.3]) + torch.tensor([0, 0, 0.08, 0.08])
            if rand(1) < 0.5:
                mask = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
            else:
                mask = ((x - cx).abs() < rx) & ((y - cy).abs() < ry)
            image = torch.where(mask, rand(3, 1, 1), image)
        texture = F.avg_pool2d(rand(1, 3, size, size), 3, stride=1, padding=1, count_include_pad=False)[0]
        images.append((image + 0.12 * (texture - 0.5)).clamp(0, 1))
    return torch.stack(images)


def _save_png(path: Path, image: torch.Tensor) -> None:
    atomic_write(path, lambda temporary: to_pil_images(image[None])[0].save(temporary, format="PNG"))


def pseudo_mos(distorted: torch.Tensor, clean: torch.Tensor, measure: str = "ssim") -> torch.Tensor:
    """100 x SSIM, or 100 x MS-SSIM with as many scales (up to 5) as the image size allows."""
    if measure == "ssim":
        return ssim(distorted, clean) * 100
    scales = max(1, min(5, int(math.log2(min(clean.shape[-2:]) / 11)) + 1))
    return ms_ssim(distorted, clean, scales=scales) * 100


CLEAN_FAMILY = "clean"


def make_dataset(
    out_dir: str | Path,
    num_references: int = 8,
    size: int = 48,
    families: Sequence[str] = FAMILIES,
    levels: int = 5,
    seed: int = 0,
    measure: str = "ssim",
    images: torch.Tensor | None = None,
    include_clean: bool = False,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset of ``num_references * len(families) * levels`` distorted images (levels
    ``k / levels``, k = 1..levels) and return the path of its ``meta.csv``.

    ``images``: clean images (N, 3, H, W) in [0, 1] to use instead of ``num_references`` procedural ones of
    ``size`` px (they are rounded to 8 bits first, as saved). ``include_clean``: add a row per clean image.
    ``seed`` draws the procedural images and the randomness of the random families (one generator per
    reference and family). ``progress``: a progress bar over the references.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    if images is None:
        if levels < 1 or num_references < 1:
            raise ValueError("make_dataset needs at least one reference image and one level")
        images = procedural_images(num_references, size, seed)
    elif images.ndim != 4 or images.shape[1] != 3 or len(images) < 1 or not images.is_floating_point():
        raise ValueError(
            f"images must be float clean images (N, 3, H, W) in [0, 1], N >= 1, got "
            f"{tuple(images.shape)} {images.dtype}"
        )
    if levels < 1:
        raise ValueError("make_dataset needs at least one level")
    out_dir = Path(out_dir)
    clean = to_8bit(images.detach().cpu().float())
    strengths = torch.arange(1, levels + 1, dtype=torch.float32) / levels
    rows = []
    for r, reference in enumerate(tqdm(clean, desc="IQA dataset", unit="ref", disable=not progress)):
        ref_name = f"reference/ref_{r:03d}.png"
        _save_png(out_dir / ref_name, reference)
        if include_clean:
            mos = pseudo_mos(reference[None], reference[None], measure)
            rows.append(
                {
                    "img_name": ref_name,
                    "ref_name": ref_name,
                    "family": CLEAN_FAMILY,
                    "level": 0.0,
                    "mos": round(float(mos[0]), 6),
                }
            )
        batch = reference[None].expand(levels, -1, -1, -1)
        for f, family in enumerate(families):
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence((seed, r, f)).generate_state(1)[0]))
            distorted = to_8bit(distort(batch, family, strengths, generator))
            mos = pseudo_mos(distorted, batch, measure)
            for k in range(levels):
                name = f"distorted/ref_{r:03d}_{family}_{k + 1}.png"
                _save_png(out_dir / name, distorted[k])
                rows.append(
                    {
                        "img_name": name,
                        "ref_name": ref_name,
                        "family": family,
                        "level": round(float(strengths[k]), 6),
                        "mos": round(float(mos[k]), 6),
                    }
                )
    meta = out_dir / "meta.csv"
    atomic_write(meta, lambda temporary: pd.DataFrame(rows).to_csv(temporary, index=False))
    return meta
