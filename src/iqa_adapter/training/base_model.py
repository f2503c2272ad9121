"""The frozen base model during adapter training: text and image encoding, noise schedule, SDXL extras.

Text goes through the pipeline's own ``encode_prompt``, so training sees exactly the embeddings that
generation uses, for SD 1.x/2.x (one text encoder) and SDXL (two, plus the pooled embedding); a dropped
text condition is the pipeline's own unconditional input (the embedding of ``""``, or zeros for SDXL with
``force_zeros_for_empty_prompt``). Images become the VAE's latent distribution parameters (mean and log
variance), from which each sample draws its latent with its own generator, so that cached and on-the-fly
training draw the same latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from diffusers import DDPMScheduler, DiffusionPipeline

from ..pipelines import load_pipeline
from .data import CropInfo

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class TextEmbeddings(NamedTuple):
    """Per-sample text condition: ``prompt_embeds`` (B, L, C) and, for SDXL, ``pooled`` (B, P)."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def where(self, mask: torch.Tensor, other: TextEmbeddings) -> TextEmbeddings:
        """Rows of ``other`` where ``mask`` (B,) is true, of ``self`` elsewhere."""
        prompt = torch.where(mask[:, None, None], other.prompt_embeds, self.prompt_embeds)
        pooled = None if self.pooled is None else torch.where(mask[:, None], other.pooled, self.pooled)
        return TextEmbeddings(prompt, pooled)


def load_pipeline_for_training(base: str, device: torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    """The base pipeline with every weight frozen, the VAE in float32 as the official training encodes latents
    (half-precision SD and SDXL VAEs also overflow); see :func:`iqa_adapter.pipelines.load_pipeline`."""
    return load_pipeline(base, device, dtype, frozen=True, vae_dtype=torch.float32)


@dataclass
class FrozenBase:
    """Encoders and noise schedule of the frozen base model."""

    pipe: DiffusionPipeline

    def __post_init__(self) -> None:
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction type {self.prediction_type!r}; supported: {PREDICTION_TYPES}")
        self._unconditional: TextEmbeddings | None = None

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def is_sdxl(self) -> bool:
        return self.unet.config.addition_embed_type == "text_time"

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def num_train_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)

    # ---------------------------------------------------------------- text
    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> TextEmbeddings:
        """Text condition of each caption, as the pipeline computes it for generation."""
        if self.is_sdxl:
            prompt, _, pooled, _ = self.pipe.encode_prompt(
                captions, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            return TextEmbeddings(prompt, pooled)
        prompt, _ = self.pipe.encode_prompt(captions, self.device, 1, False)
        return TextEmbeddings(prompt)

    @torch.no_grad()
    def unconditional_text(self, batch_size: int) -> TextEmbeddings:
        """The pipeline's unconditional (negative) text input, repeated ``batch_size`` times."""
        if self._unconditional is None:
            if self.is_sdxl:
                _, prompt, _, pooled = self.pipe.encode_prompt(
                    "", device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True
                )
                self._unconditional = TextEmbeddings(prompt, pooled)
            else:
                _, prompt = self.pipe.encode_prompt("", self.device, 1, True)
                self._unconditional = TextEmbeddings(prompt)
        unconditional = self._unconditional
        return TextEmbeddings(
            unconditional.prompt_embeds.expand(batch_size, -1, -1),
            None if unconditional.pooled is None else unconditional.pooled.expand(batch_size, -1),
        )

    # ---------------------------------------------------------------- images
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE latent distribution parameters (B, 2C, h, w), float32, of images (B, 3, H, W) in [-1, 1]."""
        vae = self.pipe.vae
        return vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.parameters.float()

    def sample_latents(self, parameters: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Scaled latents drawn from distribution parameters (B, 2C, h, w), one generator per sample."""
        mean, log_variance = parameters.float().chunk(2, dim=1)
        std = torch.exp(0.5 * log_variance.clamp(-30.0, 20.0))
        eps = torch.stack([torch.randn(mean.shape[1:], generator=generator) for generator in generators])
        latents = mean + std * eps.to(mean.device)
        config = self.pipe.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        return (latents - shift) * config.scaling_factor

    def time_ids(self, crops: list[CropInfo], resolution: int) -> torch.Tensor:
        """SDXL micro-conditioning (B, 6): original size, crop top-left, target size."""
        return torch.tensor(
            [[*crop.original_size, *crop.crop_top_left, resolution, resolution] for crop in crops], dtype=torch.float32
        )

    # ---------------------------------------------------------------- objective
    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet must predict, by the scheduler's prediction type."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, timesteps)
        return latents
