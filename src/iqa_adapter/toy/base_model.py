"""The toy base model: a tiny Stable Diffusion pipeline trained from scratch by our own code on toy data.

It is an ordinary diffusers ``StableDiffusionPipeline`` directory, loaded with
``StableDiffusionPipeline.from_pretrained(dir)`` like a real model (no safety checker or feature extractor).
32x32 images; 2.1 M parameters, 4.3 MB on disk. Design choices and what was measured (2 shared CPU cores):

* **tokenizer**: the word-level CLIP tokenizer of :mod:`iqa_adapter.toy.tokenizer` (32 tokens);
* **text encoder**: a ``CLIPTextModel`` of width 64, 2 layers, trained jointly with the UNet
  (``train_text_encoder``; the README compares it with a frozen random encoder);
* **VAE**: an ``AutoencoderKL`` (channels 32, 32; no attention) with one downsampling step: 32x32x3 images to
  16x16x8 latents (2/3 of the pixel count). A pixel-space-like factor 1 (32x32x4) reconstructed better
  after 800 steps (32.4 vs 28.6 dB PSNR on clean images, 22.7 vs 20.0 dB on Gaussian noise) but its UNet
  costs 1.6-3.5x more per step, and the UNet's steps are what the budget is short of. GroupNorm uses
  ``norm_groups = 4`` groups: with diffusers' 32 groups on 32 channels each group is one channel, i.e.
  instance normalisation, which erases the colour of flat regions, and the VAE stalled at 19 dB. The
  posterior's log-variance starts at :data:`INITIAL_LOGVAR`. Trained first, 1500 steps (MSE + a small KL
  term); its ``scaling_factor`` makes the latents' standard deviation 1;
* **UNet**: a ``UNet2DConditionModel`` (channels 32, 64, 64) with cross-attention at the two lower levels
  and, with ``top_attention`` (the default), at the full latent resolution too (SDXL has none there; without it a
  step is 2.5x cheaper, but an IQA-Adapter on such a base hardly conditions anything: the noise, blur and blocks
  that a low target asks for live at the full resolution) and, with ``pooled_text``, diffusers' ``addition_embed_type="text"``: an
  attention-pooled text embedding added to the time embedding, computed inside the UNet from the same text
  states, so the pipeline call is unchanged. **v-prediction**, with the loss weight capped for low noise:
  in terms of the error of the implied clean latent, the weight is ``min(SNR, 5) + 1``. Epsilon
  prediction with min-SNR weighting (weight ``min(SNR, 5)``) gives almost no weight to the high-noise steps,
  where the prompt decides colours and layout: after 800 steps its images had the prompt's background colour
  15 % of the time (chance 11 %; 19 % after 3000 steps without the pooled text), against 99 % for
  v-prediction after the same 800 steps (100 prompts, guidance 4). Captions of 10 % of the samples
  are replaced by the empty prompt (the pipeline's unconditional prompt) so that classifier-free guidance
  works; AdamW, warm-up then cosine learning rate, an EMA of the weights (the EMA is what is saved).
  Shapes come last and with steps, not width: on clean single-object scenes a fresh UNet drew the caption's
  shape in 11, 20, 37, 52 % of the images after 1000 to 4000 steps with top attention (10, 18, 21, 35 %
  without, in half the time), and a wider UNet did no better per step. So steps are made cheap: 2 attention heads
  per layer (``attention_heads``; diffusers calls it ``attention_head_dim``): with 8, heads of 4 to 8 channels,
  PyTorch's CPU attention was about half of a training step (0.49 s against 0.28 s on 2 threads, batch 32;
  ``benchmarks/bench_toy_attention_heads.py``). The default, 7000 steps with top attention on data with 70 %
  single-object scenes and half of the images clean, draws the caption's shape in 59 % of the images (world 4's
  base, 8 heads, 4000 steps, 40 % clean: 18.5 %). A base of 9000 steps without top attention drew
  shapes in 35.5 % of the images, but an adapter trained on it moved CNNIQA by 0.2 points between the 1st and
  99th percentile targets (world 1's adapter on its top-attention base: 16 points);
* **scheduler**: ``DDIMScheduler`` with DDPM's linear betas (1e-4 to 0.02), "trailing" timesteps and the
  model's prediction type. Almost no signal is left at t = 999 (alphas_cumprod 4e-5): the SD schedule
  keeps 0.0047 there, enough for a 16x16 latent's mean colour to survive in training while sampling starts
  from pure noise (Lin et al., 2024).

UNet and VAE are stored in float16 safetensors, the text encoder in float32 (it is small): transformers keeps
the stored dtype when no ``torch_dtype`` is given, and an fp16 text encoder would feed fp16 embeddings into the
fp32 UNet that diffusers loads by default.

:func:`train_base_model` runs both stages with resumable checkpoints (``out_dir/training/{vae,unet}.pt``,
written atomically every ``checkpoint_every`` steps) and writes ``out_dir/pipeline``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..io_utils import atomic_write, reject_unknown_fields, write_json
from .tokenizer import toy_tokenizer

PIPELINE_DIR = "pipeline"
TRAINING_DIR = "training"
CONFIG_FILE = "toy_base_config.json"
VAE_SETTINGS = (
    "size",
    "latent_channels",
    "vae_channels",
    "norm_groups",
    "vae_steps",
    "vae_batch_size",
    "vae_lr",
    "kl_weight",
    "weight_decay",
    "seed",
    "images",
)
PREDICTION_TYPES = ("v_prediction", "epsilon")
INITIAL_LOGVAR = -8.0  # posterior standard deviation exp(-4) = 0.02 at initialisation
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    beta_schedule="linear",
    clip_sample=False,
    set_alpha_to_one=False,
    timestep_spacing="trailing",
    steps_offset=1,  # what StableDiffusionPipeline would rewrite it to, with a deprecation warning (unused by "trailing")
)


@dataclass(frozen=True)
class ToyBaseConfig:
    """Architecture and training settings of the toy base model (saved beside the pipeline)."""

    size: int = 32
    latent_channels: int = 8
    vae_channels: tuple[int, ...] = (32, 32)  # one entry per level; len - 1 downsamplings
    unet_channels: tuple[int, ...] = (32, 64, 64)
    attention_heads: int = 2  # per attention layer, at every level (diffusers calls this attention_head_dim)
    top_attention: bool = True  # attention at the full latent resolution (SDXL has none there; 2.5x cheaper without)
    pooled_text: bool = True  # also add an attention-pooled text embedding to the time embedding
    norm_groups: int = 4  # GroupNorm groups in VAE and UNet (module docstring)
    text_width: int = 64
    text_layers: int = 2
    train_text_encoder: bool = True
    vae_steps: int = 1500
    vae_batch_size: int = 32
    vae_lr: float = 3e-3
    kl_weight: float = 1e-5  # per latent element, beside the per-pixel MSE
    unet_steps: int = 7000
    unet_batch_size: int = 32
    unet_lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-2
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0  # the loss weight cap (module docstring)
    prediction_type: str = "v_prediction"  # or "epsilon"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {self.prediction_type!r}"
            )

    @classmethod
    def from_dict(cls, data: dict) -> ToyBaseConfig:
        """The inverse of ``dataclasses.asdict`` (lists become tuples); unknown keys are errors."""
        reject_unknown_fields(cls, data, "toy base config")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})

    def to_dict(self) -> dict:
        """JSON-ready settings."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- architecture


def build_vae(config: ToyBaseConfig) -> AutoencoderKL:
    """A small ``AutoencoderKL`` (no attention) with downsampling factor ``2 ** (len(vae_channels) - 1)``.

    The posterior's log-variance starts at :data:`INITIAL_LOGVAR` instead of about 0: a posterior standard
    deviation of 1 would drown the latents in noise, and a short training would spend its steps shrinking it.
    """
    levels = len(config.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_groups,
        sample_size=config.size,
        mid_block_add_attention=False,
    )
    with torch.no_grad():
        logvar = slice(config.latent_channels, None)  # quant_conv's outputs are [mean, logvar]
        vae.quant_conv.weight[logvar] = 0
        vae.quant_conv.bias[logvar] = INITIAL_LOGVAR
    return vae


def build_text_encoder(config: ToyBaseConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A tiny CLIP text transformer sized for the toy vocabulary."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_width,
            intermediate_size=2 * config.text_width,
            num_attention_heads=4,
            num_hidden_layers=config.text_layers,
            max_position_embeddings=tokenizer.model_max_length,
            projection_dim=config.text_width,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_unet(config: ToyBaseConfig) -> UNet2DConditionModel:
    """A small UNet with cross-attention blocks at every resolution."""
    levels = len(config.unet_channels)
    factor = 2 ** (len(config.vae_channels) - 1)
    down = ["CrossAttnDownBlock2D"] * levels
    up = ["CrossAttnUpBlock2D"] * levels
    if not config.top_attention:  # the full-resolution level convolves only, as SDXL's first level
        down[0], up[-1] = "DownBlock2D", "UpBlock2D"
    return UNet2DConditionModel(
        sample_size=config.size // factor,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        layers_per_block=1,
        block_out_channels=config.unet_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        cross_attention_dim=config.text_width,
        attention_head_dim=config.attention_heads,  # diffusers' name for the number of heads
        norm_num_groups=config.norm_groups,
        addition_embed_type="text" if config.pooled_text else None,
        addition_embed_type_num_heads=4,
    )


def build_toy_pipeline(config: ToyBaseConfig) -> StableDiffusionPipeline:
    """The toy base pipeline with freshly initialised (seeded) weights."""
    torch.manual_seed(config.seed)
    tokenizer = toy_tokenizer()
    return StableDiffusionPipeline(
        vae=build_vae(config),
        text_encoder=build_text_encoder(config, tokenizer),
        tokenizer=tokenizer,
        unet=build_unet(config),
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG, prediction_type=config.prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_toy_pipeline(pipe: StableDiffusionPipeline, out_dir: str | Path) -> Path:
    """Save as a diffusers directory: UNet and VAE in float16, the text encoder in float32 (module docstring).

    The files are written into a temporary sibling directory that replaces ``out_dir`` at the end, so a
    reader never sees a half-written pipeline. ``pipe``'s UNet and VAE are left in float16.
    """
    out_dir = Path(out_dir)
    temporary = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # casting with .to() warns about fp32 modules; these have none
    try:
        pipe.unet.to(torch.float16)
        pipe.vae.to(torch.float16)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    pipe.save_pretrained(temporary, safe_serialization=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    temporary.rename(out_dir)
    return out_dir


def load_toy_pipeline(path: str | Path) -> StableDiffusionPipeline:
    """Load a saved toy pipeline (float32: diffusers upcasts the float16 weights), progress bar off."""
    pipe = StableDiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------- a resumable training stage


@dataclass
class Stage:
    """One optimisation: ``loss(generator)`` draws a batch and returns the loss of ``modules``.

    The modules' weights are trained in place; with ``ema_decay`` the EMA weights are copied into them
    at the end (and are what checkpoints resume from, with everything else).
    """

    name: str
    modules: dict[str, torch.nn.Module]
    loss: Callable[[torch.Generator], torch.Tensor]
    steps: int
    lr: float
    warmup_steps: int
    weight_decay: float
    ema_decay: float | None = None


def _learning_rate_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def run_stage(
    stage: Stage,
    checkpoint: Path,
    seed: int,
    checkpoint_every: int = 250,
    progress: bool = True,
    config: dict | None = None,
) -> list[float]:
    """Train ``stage`` to its last step, resuming from ``checkpoint`` when it exists; returns the losses of
    the steps run now. The checkpoint (weights, EMA, optimizer, random state, step) is written atomically
    every ``checkpoint_every`` steps and at the end; one written with another ``config`` is refused."""
    parameters = [p for module in stage.modules.values() for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=stage.lr, weight_decay=stage.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _learning_rate_factor(step, stage.warmup_steps, stage.steps)
    )
    ema = [p.detach().clone() for p in parameters] if stage.ema_decay else []
    generator = torch.Generator().manual_seed(seed)
    step = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        if state["config"] != json.dumps(config, sort_keys=True):
            raise ValueError(
                f"{checkpoint} was written by a run with other settings; delete it or use another output directory"
            )
        for name, module in stage.modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for average, saved in zip(ema, state["ema"]):
            average.copy_(saved)
        generator.set_state(state["generator"])
        step = state["step"]

    def save() -> None:
        state = dict(
            modules={name: module.state_dict() for name, module in stage.modules.items()},
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            ema=ema,
            generator=generator.get_state(),
            step=step,
            config=json.dumps(config, sort_keys=True),
        )
        atomic_write(checkpoint, lambda temporary: torch.save(state, temporary))

    losses = []
    for module in stage.modules.values():
        module.train()
    bar = tqdm(total=stage.steps, initial=step, desc=stage.name, unit="step", disable=not progress)
    while step < stage.steps:
        loss = stage.loss(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        decay = min(stage.ema_decay or 0.0, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, parameter in zip(ema, parameters):
                average.lerp_(parameter, 1 - decay)
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if step % checkpoint_every == 0 or step == stage.steps:
            save()
    bar.close()
    with torch.no_grad():
        for average, parameter in zip(ema, parameters):
            parameter.copy_(average)
    for module in stage.modules.values():
        module.eval()
    return losses


# ---------------------------------------------------------------- the two stages


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [-1, 1], the VAE's input range."""
    return images.float() / 127.5 - 1


def vae_stage(vae: AutoencoderKL, images: torch.Tensor, config: ToyBaseConfig) -> Stage:
    """Reconstruction (MSE on [-1, 1] pixels) plus ``kl_weight`` times the KL term per latent element."""

    def loss(generator: torch.Generator) -> torch.Tensor:
        batch = to_model_range(images[torch.randint(len(images), (config.vae_batch_size,), generator=generator)])
        posterior = vae.encode(batch).latent_dist
        latents = posterior.sample(generator=generator)
        reconstruction = vae.decode(latents).sample
        kl = posterior.kl().mean() / latents[0].numel()
        return F.mse_loss(reconstruction, batch) + config.kl_weight * kl

    return Stage(
        "VAE", {"vae": vae}, loss, config.vae_steps, config.vae_lr, warmup_steps=50, weight_decay=config.weight_decay
    )


@torch.no_grad()
def encode_images(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The posterior means of uint8 images (N, 3, H, W), unscaled."""
    return torch.cat(
        [
            vae.encode(to_model_range(images[start : start + batch_size])).latent_dist.mode()
            for start in range(0, len(images), batch_size)
        ]
    )


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids (N, max_length), padded and truncated as the pipeline does."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def unet_stage(
    pipe: StableDiffusionPipeline, latents: torch.Tensor, token_ids: torch.Tensor, config: ToyBaseConfig
) -> Stage:
    """The denoising loss (module docstring: v or epsilon prediction, capped weights); the captions of
    ``caption_dropout`` of the samples are replaced by the empty prompt. ``latents`` are already scaled by
    the VAE's scaling factor."""
    unet, text_encoder = pipe.unet, pipe.text_encoder
    text_encoder.requires_grad_(config.train_text_encoder)
    empty = tokenize(pipe.tokenizer, [""])[0]
    alphas_cumprod = pipe.scheduler.alphas_cumprod
    noise_steps = pipe.scheduler.config.num_train_timesteps

    def loss(generator: torch.Generator) -> torch.Tensor:
        batch = torch.randint(len(latents), (config.unet_batch_size,), generator=generator)
        ids = token_ids[batch].clone()
        ids[torch.rand(len(batch), generator=generator) < config.caption_dropout] = empty
        with torch.set_grad_enabled(config.train_text_encoder):
            context = text_encoder(ids).last_hidden_state
        clean = latents[batch]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(noise_steps, (len(batch),), generator=generator)
        alpha = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * clean + (1 - alpha).sqrt() * noise
        prediction = unet(noisy, timesteps, context).sample
        snr = alpha.flatten() / (1 - alpha.flatten())
        if config.prediction_type == "epsilon":
            target, weight = noise, snr.clamp(max=config.min_snr_gamma) / snr
        else:
            target = alpha.sqrt() * noise - (1 - alpha).sqrt() * clean
            weight = (snr.clamp(max=config.min_snr_gamma) + 1) / (snr + 1)
        return (weight * (prediction - target).pow(2).mean(dim=(1, 2, 3))).mean()

    modules = {"unet": unet} | ({"text_encoder": text_encoder} if config.train_text_encoder else {})
    return Stage(
        "UNet",
        modules,
        loss,
        config.unet_steps,
        config.unet_lr,
        config.warmup_steps,
        config.weight_decay,
        config.ema_decay,
    )


def train_base_model(
    images: torch.Tensor,
    captions: list[str],
    out_dir: str | Path,
    config: ToyBaseConfig = ToyBaseConfig(),
    checkpoint_every: int = 250,
    progress: bool = True,
) -> StableDiffusionPipeline:
    """Train the VAE, then UNet and text encoder, on uint8 ``images`` (N, 3, size, size) with ``captions``;
    save the pipeline in ``out_dir/pipeline`` and return it as loaded from there.

    Run again with the same arguments after an interruption, it resumes from ``out_dir/training``.
    """
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, config.size, config.size) or images.dtype != torch.uint8:
        raise ValueError(
            f"train_base_model: expected uint8 images of shape (N, 3, {config.size}, {config.size}), "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    if len(captions) != len(images):
        raise ValueError(f"train_base_model: {len(images)} images but {len(captions)} captions")
    out_dir = Path(out_dir)
    write_json(out_dir / CONFIG_FILE, config.to_dict())
    started = time.perf_counter()
    pipe = build_toy_pipeline(config)
    settings = config.to_dict() | {"images": len(images)}
    vae_settings = {key: settings[key] for key in VAE_SETTINGS}  # a UNet-only change keeps the trained VAE
    run_stage(
        vae_stage(pipe.vae, images, config),
        out_dir / TRAINING_DIR / "vae.pt",
        config.seed,
        checkpoint_every,
        progress,
        vae_settings,
    )
    latents = encode_images(pipe.vae, images)
    pipe.vae.register_to_config(scaling_factor=float(1 / latents.std()))
    latents = latents * pipe.vae.config.scaling_factor
    run_stage(
        unet_stage(pipe, latents, tokenize(pipe.tokenizer, captions), config),
        out_dir / TRAINING_DIR / "unet.pt",
        config.seed + 1,
        checkpoint_every,
        progress,
        settings,
    )
    save_toy_pipeline(pipe, out_dir / PIPELINE_DIR)
    write_json(out_dir / "training_time.json", {"seconds_this_run": round(time.perf_counter() - started, 1)})
    return load_toy_pipeline(out_dir / PIPELINE_DIR)
