"""Measurements of a toy base model: VAE reconstruction, caption following, and a sample grid.

All of them draw their scenes with :data:`EVALUATION_SEED`, not with the training data's seed (0 by default).

* :func:`vae_psnr`: PSNR of the VAE's reconstructions (posterior mean, decoded) of clean rendered scenes and
  of the same scenes degraded by every distortion family at a random level in [0, 1], overall and per family;
* :func:`caption_following_report`: single-object prompts with every attribute stated, one image per
  prompt, read by :func:`~iqa_adapter.toy.caption_check.caption_following`; the same reading of the
  rendered scenes, clean and degraded as in the training data, gives the ceiling;
* :func:`sample_grid`: prompts x seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from PIL import Image
from scipy.stats import spearmanr

from ..distortions import FAMILIES, distort, random_distortions
from ..grid import image_grid
from ..images import to_uint8_arrays
from ..pipelines import vae_round_trip
from .caption_check import caption_following
from .data import TRAINING_CLEAN_FRACTION
from .scenes import Scene, render_scenes, scene_for
from .world import GUIDANCE_SCALE, SAMPLING_STEPS

EVALUATION_SEED = 1000
GRID_PROMPTS = (
    "a large red circle on the left on a plain blue background",
    "a large yellow square on the right on a striped purple background",
    "a large white triangle at the top on a gradient green background",
    "a large green star in the centre on a checked pink background",
    "a large black ring at the bottom on a dotted yellow background",
    "a large blue cross on the left on a plain orange background",
    "a yellow sun on the right above green hills under a blue sky",
    "a small cyan diamond on the left and a large red circle on the right on a plain black background",
)


def psnr(reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of float images in [0, 1], (N, 3, H, W)."""
    mse = (reference - image).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return 10 * torch.log10(1 / mse)


def rendered_scenes(
    count: int, size: int, seed: int = EVALUATION_SEED, kind: str | None = None
) -> tuple[list[Scene], torch.Tensor]:
    """``count`` scenes with full captions and their clean renderings as float (N, 3, size, size) in [0, 1]."""
    scenes = [scene_for(seed, index, kind=kind, full_caption=True) for index in range(count)]
    return scenes, render_scenes(scenes, size)


def vae_psnr(vae: AutoencoderKL, size: int, count: int = 128, seed: int = EVALUATION_SEED) -> dict:
    """Mean reconstruction PSNR (dB) of ``clean`` and ``distorted`` images (all families; ``per_family``),
    and ``distortion_rank_correlation``: the Spearman correlation, over the distorted images, between
    PSNR(clean, distorted) and PSNR(clean, reconstruction of distorted). Near 1, the VAE keeps the order of
    degradation strengths; a VAE that removed noise or blur would lower it."""
    _, clean = rendered_scenes(count, size, seed)
    generator = torch.Generator().manual_seed(seed)
    per_family, before, after = {}, [], []
    for family in FAMILIES:
        levels = torch.rand(count, generator=generator)
        degraded = distort(clean, family, levels, generator)
        reconstruction = vae_round_trip(vae, degraded)
        per_family[family] = float(psnr(degraded, reconstruction).mean())
        before.append(psnr(clean, degraded))
        after.append(psnr(clean, reconstruction))
    correlation = spearmanr(torch.cat(before).numpy(), torch.cat(after).numpy()).statistic
    return dict(
        clean=float(psnr(clean, vae_round_trip(vae, clean)).mean()),
        distorted=float(np.mean(list(per_family.values()))),
        per_family=per_family,
        distortion_rank_correlation=float(correlation),
    )


def generate(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = SAMPLING_STEPS,
    guidance: float = GUIDANCE_SCALE,
    batch_size: int = 32,
) -> list[np.ndarray]:
    """One image per (prompt, seed) pair, as (H, W, 3) uint8 arrays; each image has its own CPU generator."""
    if len(prompts) != len(seeds):
        raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[chunk]]
        output = pipe(
            list(prompts[chunk]),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="np",
        )
        images += [np.round(image * 255).astype(np.uint8) for image in output.images]
    return images


def caption_following_report(
    pipe: StableDiffusionPipeline,
    count: int = 200,
    steps: int = SAMPLING_STEPS,
    guidance: float = GUIDANCE_SCALE,
    seed: int = EVALUATION_SEED,
) -> dict:
    """Caption following of generated images, with the ceilings measured on rendered scenes: ``clean``
    (the reading's own accuracy) and ``training_mix`` (degraded as the training data)."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    scenes, clean = rendered_scenes(count, size, seed, kind="single")
    degraded, _, _ = random_distortions(
        clean, torch.Generator().manual_seed(seed), clean_fraction=TRAINING_CLEAN_FRACTION
    )
    generated = generate(pipe, [scene.caption for scene in scenes], list(range(count)), steps, guidance)
    return dict(
        generated=caption_following(generated, scenes),
        ceiling_clean=caption_following(list(to_uint8_arrays(clean)), scenes),
        ceiling_training_mix=caption_following(list(to_uint8_arrays(degraded)), scenes),
        steps=steps,
        guidance=guidance,
    )


def sample_grid(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str] = GRID_PROMPTS,
    seeds: Sequence[int] = range(6),
    steps: int = SAMPLING_STEPS,
    guidance: float = GUIDANCE_SCALE,
) -> Image.Image:
    """A grid with one row per prompt (labelled) and one column per seed."""
    seeds = list(seeds)
    images = generate(pipe, [prompt for prompt in prompts for _ in seeds], seeds * len(prompts), steps, guidance)
    return image_grid(
        [Image.fromarray(image) for image in images],
        columns=len(seeds),
        row_labels=list(prompts),
        column_labels=[f"seed {seed}" for seed in seeds],
        min_cell=96,
    )
