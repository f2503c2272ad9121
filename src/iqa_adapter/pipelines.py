"""Loading the base text-to-image pipeline (a diffusers folder or a hub id), for generation and training."""

from __future__ import annotations

import warnings

import torch
from diffusers import DiffusionPipeline

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
