"""Loading the base text-to-image pipeline (a diffusers folder or a hub id), for generation and training."""

from __future__ import annotations

import warnings

import torch
from diffusers import AutoencoderKL, DiffusionPipeline

from .hub import loading_options, not_found_message

# The safety checker and its feature extractor judge generated images; training and the quality
# experiments never use them, and skipping them saves loading a CLIP vision model.
SKIPPED_COMPONENTS = ("safety_checker", "feature_extractor")


def load_pipeline(
    base: str,
    device: str | torch.device,
    dtype: torch.dtype,
    *,
    frozen: bool = False,
    vae_dtype: torch.dtype | None = None,
) -> DiffusionPipeline:
    """The SD 1.x/2.x or SDXL pipeline ``base`` on ``device`` in ``dtype`` (its VAE in ``vae_dtype`` when given),
    progress bars off.

    ``frozen``: every weight without gradients and in eval mode (for adapter training). Raises ValueError
    with the fix when the model cannot be loaded or has no UNet.
    """
    options = loading_options(base)
    try:
        components = DiffusionPipeline.load_config(base, **options)
        skipped = {name: None for name in SKIPPED_COMPONENTS if name in components}
        with warnings.catch_warnings():  # newer diffusers renamed torch_dtype to dtype; older ones need torch_dtype
            warnings.simplefilter("ignore", FutureWarning)
            dtypes = dtype if vae_dtype is None else {"default": dtype, "vae": vae_dtype}
            pipe = DiffusionPipeline.from_pretrained(base, torch_dtype=dtypes, **skipped, **options)
    except (OSError, ValueError) as error:
        if options.get("local_files_only"):
            raise ValueError(not_found_message(base, "the base model")) from None
        raise ValueError(
            f"cannot load the base model {base!r}: {' '.join(str(error).split())} Give a diffusers "
            "model folder or a hub id (hub ids need the internet or a filled Hugging Face cache)"
        ) from None
    if not hasattr(pipe, "unet") or not hasattr(pipe, "vae"):
        raise ValueError(
            f"{base!r} is a {type(pipe).__name__}, which has no UNet; IQA-Adapter needs an SD 1.x/2.x or SDXL pipeline"
        )
    if frozen:
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


VAE_PIXELS_PER_CALL = 2**21
"""Most pixels a VAE round trip encodes at once (8 images of 512x512): the decoder's activations are large."""


def load_vae(base: str, device: str | torch.device) -> AutoencoderKL:
    """The VAE of the pipeline ``base`` (its ``vae/`` folder; or ``base`` itself when it is a VAE folder), frozen,
    in float32 (the official training encodes with a float32 VAE). Raises ValueError with the fix when it cannot be
    loaded."""
    options = loading_options(base)
    for subfolder in ("vae", None):
        try:
            vae = AutoencoderKL.from_pretrained(base, subfolder=subfolder, torch_dtype=torch.float32, **options)
            break
        except (OSError, ValueError):
            continue
    else:
        if options.get("local_files_only"):
            raise ValueError(not_found_message(base, "the VAE")) from None
        raise ValueError(
            f"cannot load a VAE from {base!r}: give a diffusers pipeline folder or hub id (its vae/ is used) or a VAE "
            "folder (hub ids need the internet or a filled Hugging Face cache)"
        )
    return vae.requires_grad_(False).eval().to(device)


@torch.no_grad()
def vae_round_trip(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """``images`` (N, 3, H, W) in [0, 1] as ``vae`` reproduces them: encoded (the posterior mean), decoded, clipped
    to [0, 1]; in slices of at most :data:`VAE_PIXELS_PER_CALL` pixels. H and W must be multiples of
    :func:`vae_factor`."""
    step = max(1, VAE_PIXELS_PER_CALL // (images.shape[-2] * images.shape[-1]))
    parts = []
    for start in range(0, len(images), step):
        pixels = images[start : start + step].to(vae.device, vae.dtype) * 2 - 1
        decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
        parts.append(((decoded.float() + 1) / 2).clamp_(0, 1).to(images.device))
    return torch.cat(parts)


def vae_factor(vae: AutoencoderKL) -> int:
    """The VAE's downsampling factor (8 for Stable Diffusion's)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)
