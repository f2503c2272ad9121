"""Model architectures built from configs: the full SD 1.5 / SDXL UNets and pipelines (for benchmarks and
layout checks, random weights) and tiny SD / SDXL pipelines (for tests).

Nothing here downloads anything: the tiny pipelines include a character-level CLIP tokenizer made on the
spot, so they run on a machine with no internet.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

# The UNet configs of runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0.
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
SDXL_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
UNET_CONFIGS = {"sd15": SD15_UNET_CONFIG, "sdxl": SDXL_UNET_CONFIG}
BASE_MODEL_IDS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
"""The hub ids of the models whose architectures the short names stand for."""

_TINY_TEXT_WIDTH = 32
_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def unet_from_config(name: str, device: str | torch.device | None = None) -> UNet2DConditionModel:
    """A full-size UNet with random weights (``device="meta"`` builds only the structure)."""
    if name not in UNET_CONFIGS:
        raise ValueError(f"unknown architecture {name!r}; choose from {sorted(UNET_CONFIGS)}")
    with torch.device(device or "cpu"):
        return UNet2DConditionModel(**UNET_CONFIGS[name])


def char_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer with one token per printable ASCII character (no merges): offline and tiny."""
    characters = [chr(code) for code in range(33, 127)]
    vocab = {token: index for index, token in enumerate(characters + [c + "</w>" for c in characters])}
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _tiny_text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TINY_TEXT_WIDTH,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=_TINY_TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 32),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """An SD 1.x-shaped pipeline (cross-attention in down, mid and up blocks), random weights, 32x32 images."""
    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_TINY_TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    return StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_tiny_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """An SDXL-shaped pipeline: two text encoders, pooled and micro-conditioning, deep transformer blocks."""
    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        cross_attention_dim=2 * _TINY_TEXT_WIDTH,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=_TINY_TEXT_WIDTH + 6 * time_embed_dim,
        norm_num_groups=32,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_tiny_text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_tiny_text_config(tokenizer)),
        tokenizer=tokenizer,
        tokenizer_2=char_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(**_SCHEDULER),
    )


# Text encoders and VAEs of the full-size models (CLIP ViT-L/14, OpenCLIP ViT-bigG/14, the SD / SDXL VAE).
CLIP_L_TEXT = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    projection_dim=768,
    hidden_act="quick_gelu",
)
CLIP_BIGG_TEXT = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    projection_dim=1280,
    hidden_act="gelu",
)
FULL_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)


def full_size_pipeline(name: str, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
    """The full SD 1.5 or SDXL pipeline architecture with random weights and an offline character tokenizer.

    For benchmarks of memory and speed (nothing is downloaded; the images it makes are noise).
    """
    if name not in UNET_CONFIGS:
        raise ValueError(f"unknown architecture {name!r}; choose from {sorted(UNET_CONFIGS)}")
    tokenizer = char_tokenizer()

    def text_config(sizes: dict) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **sizes,
        )

    with torch.device(device or "cpu"):
        unet = UNet2DConditionModel(**UNET_CONFIGS[name])
        scheduler = DDIMScheduler(**_SCHEDULER)
        if name == "sd15":
            pipe = StableDiffusionPipeline(
                vae=AutoencoderKL(**FULL_VAE, sample_size=512, scaling_factor=0.18215),
                text_encoder=CLIPTextModel(text_config(CLIP_L_TEXT)),
                tokenizer=tokenizer,
                unet=unet,
                scheduler=scheduler,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        else:
            pipe = StableDiffusionXLPipeline(
                vae=AutoencoderKL(**FULL_VAE, sample_size=1024, scaling_factor=0.13025),
                text_encoder=CLIPTextModel(text_config(CLIP_L_TEXT)),
                text_encoder_2=CLIPTextModelWithProjection(text_config(CLIP_BIGG_TEXT)),
                tokenizer=tokenizer,
                tokenizer_2=char_tokenizer(),
                unet=unet,
                scheduler=scheduler,
            )
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
