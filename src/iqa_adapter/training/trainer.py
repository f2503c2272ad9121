"""Adapter-only training of an IQA-Adapter on a frozen SD 1.x/2.x or SDXL base, with accelerate.

The loop (paper section 3.2.2): for each sample, a timestep ``t`` uniform over the scheduler's training
steps, noise added to the image's latent, and the UNet, with the adapter attached, predicts the noise (or
``v``, or the sample, by the scheduler's prediction type) from the noisy latent, the caption and the
z-scores of the sample's quality scores; the loss is the mean squared error. Only the adapter (projection
and per-layer quality K/V) has gradients. Conditions are dropped for classifier-free guidance from one
uniform draw per sample: quality only (rate ``drop_quality``), text only (``drop_text``), both
(``drop_both``); a dropped quality is the all-zero feature vector (:meth:`IQAAdapter.null_inputs`), a
dropped text the pipeline's own unconditional input.

Every random draw of a sample is seeded by the run's seed and the sample's place in the run
(:func:`~iqa_adapter.training.data.sample_generator`), and each process takes its slice of every global
batch (:class:`~iqa_adapter.training.data.StepSampler`). So a run killed and resumed from a checkpoint,
and a run spread over several processes with the same global batch, compute the same steps as one
uninterrupted single-process run, up to floating-point summation order.

Outputs in ``out``: ``train_config.json``, ``checkpoints/step_N/`` (:mod:`.checkpoint`), ``logs/train_log.csv``
(and TensorBoard events when tensorboard is installed), ``validation/step_N.png`` grids, and the final
``adapter/`` (``config.json`` + ``adapter.safetensors``, the EMA weights when EMA is on).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..adapter import IQAAdapter
from ..annotate import STATS_FILE, ScoreTable
from ..grid import image_grid
from ..io_utils import atomic_write
from ..reference import ReferenceEncoder, ReferenceSpec
from ..stats import MetricStats, load_stats_table
from .base_model import FrozenBase, TextEmbeddings, load_pipeline_for_training
from .cache import TrainingCache, build_cache, cached_crops, cached_text, read_cache_entry
from .checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from .config import TrainConfig, load_train_config
from .data import (
    ImageTransform,
    SampleDraw,
    StepSampler,
    TrainingSample,
    list_training_samples,
    load_training_image,
    sample_generator,
)
from .logger import TrainLogger

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VALIDATION_PERCENTILES = ("p1", "p50", "p99")


@dataclass
class TrainResult:
    """What a finished run produced."""

    adapter_dir: Path
    steps: int
    final_loss: float
    skipped_images: int  # unreadable images met during training (or left out of the cache)
    samples: int  # samples trained on, over all steps and processes
    without_scores: int  # dataset samples left out: no score, or a NaN / infinite one


class AdapterTrainingModule(nn.Module):
    """The frozen UNet with the adapter attached (what DDP wraps); only the adapter's parameters train."""

    def __init__(self, unet: nn.Module, adapter: IQAAdapter):
        super().__init__()
        self.unet = unet
        self.adapter = adapter

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        text: TextEmbeddings,
        features: torch.Tensor,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        added = {"image_embeds": [features[:, None, :]]}
        if time_ids is not None:
            added.update(text_embeds=text.pooled, time_ids=time_ids)
        return self.unet(noisy, timesteps, encoder_hidden_states=text.prompt_embeds, added_cond_kwargs=added).sample


class _OnTheFlyItems(Dataset):
    """Decodes and crops a sample's image in a loader worker; unreadable images come back as a reason."""

    def __init__(self, samples: list[TrainingSample], transform: ImageTransform, seed: int):
        self.samples, self.transform, self.seed = samples, transform, seed

    def __getitem__(self, draw: SampleDraw) -> dict:
        sample = self.samples[draw.index]
        loaded = load_training_image(sample, self.transform, sample_generator(self.seed, draw, "crop"))
        if isinstance(loaded, str):
            return {"draw": draw, "skipped": loaded}
        pixels, crop = loaded
        return {
            "draw": draw,
            "pixels": pixels,
            "crop": crop,
            "caption": sample.sample.caption,
            "scores": torch.from_numpy(sample.scores),
        }


class _CachedItems(Dataset):
    """Reads a sample's cached latent distribution and text condition."""

    def __init__(self, samples: list[TrainingSample], cache: TrainingCache):
        self.samples, self.cache = samples, cache

    def __getitem__(self, draw: SampleDraw) -> dict:
        sample = self.samples[draw.index]
        return {
            "draw": draw,
            "cached": read_cache_entry(self.cache.entries[sample.key]),
            "scores": torch.from_numpy(sample.scores),
        }


def learning_rate_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of the learning rate at optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    if config.lr_schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def condition_drops(draws: torch.Tensor, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop quality, drop text) masks from one uniform draw per sample, as the official code does:
    ``[0, q)`` quality only, ``[q, q + t)`` text only, ``[q + t, q + t + b)`` both."""
    quality_limit = config.drop_quality
    text_limit = quality_limit + config.drop_text
    both_limit = text_limit + config.drop_both
    drop_quality = (draws < quality_limit) | ((draws >= text_limit) & (draws < both_limit))
    drop_text = (draws >= quality_limit) & (draws < both_limit)
    return drop_quality, drop_text


def training_statistics(config: TrainConfig, samples: list[TrainingSample]) -> list[MetricStats]:
    """Normalisation and percentile table of each conditioning metric over the training samples.

    The direction of each metric comes from the ``stats.csv`` that ``annotate`` wrote beside the scores,
    else from the metric registry, else higher is better.
    """
    from ..metrics import metric_info

    table_path = Path(config.scores)
    table_path = (table_path if table_path.is_dir() else table_path.parent) / STATS_FILE
    directions = (
        {name: stats.higher_is_better for name, stats in load_stats_table(table_path).items()}
        if table_path.is_file()
        else {}
    )
    scores = np.stack([sample.scores for sample in samples])
    stats = []
    for column, name in enumerate(config.metrics):
        if name not in directions:
            try:
                directions[name] = metric_info(name).higher_is_better
            except (KeyError, ValueError, RuntimeError):
                directions[name] = True
        stats.append(MetricStats.from_scores(name, scores[:, column], directions[name]))
    return stats


def _make_adapter(
    config: TrainConfig, pipe, samples: list[TrainingSample], encoder: ReferenceEncoder | None
) -> IQAAdapter:
    """A new adapter for the base, or the ``init_adapter`` to continue from (second stage).

    Statistics (z-score normalisation, or the reference features' standardisation) come from the training
    samples, or stay those of ``init_adapter`` with ``stats_from="init"``.
    """
    stats = training_statistics(config, samples) if encoder is None else []
    reference = None
    if encoder is not None:
        spec = ReferenceSpec.parse(config.reference_features)
        reference = {"metric": spec.metric, "layers": list(spec.layers), "feature_dim": encoder.feature_dim}
    if config.init_adapter is None:
        adapter = IQAAdapter.for_unet(
            pipe,
            stats,
            reference=reference,
            num_tokens=config.num_tokens,
            projection=config.projection,
            encoding_frequencies=config.encoding_frequencies,
            flag_feature=config.flag_feature,
            base_model=config.base,
            seed=config.seed,
        )
    else:
        adapter = IQAAdapter.from_pretrained(config.init_adapter)
        if (adapter.metric_names, adapter.config.reference) != (list(config.metrics), reference):
            raise ValueError(
                f"--init-adapter is conditioned on {adapter.metric_names or adapter.config.reference}, this "
                f"run on {config.metrics or reference}; train on the same condition, in the same order"
            )
        if config.stats_from == "data":
            adapter.config.metrics = stats
    adapter.config.train_scale = config.train_scale
    if config.default_target is not None:
        adapter.config.default_targets = dict.fromkeys(adapter.metric_names, config.default_target)
    if encoder is not None and (config.init_adapter is None or config.stats_from == "data"):
        mean, std = reference_statistics(config, samples, encoder)
        adapter.feature_mean.copy_(mean)
        adapter.feature_std.copy_(std)
    return adapter


REFERENCE_STATISTICS_SAMPLES = 256


@torch.no_grad()
def reference_statistics(
    config: TrainConfig, samples: list[TrainingSample], encoder: ReferenceEncoder
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the reference features over the first training samples (centre crops)."""
    transform = ImageTransform(config.resolution, "center")
    features = []
    for sample in samples[:REFERENCE_STATISTICS_SAMPLES]:
        loaded = load_training_image(sample, transform, None)
        if not isinstance(loaded, str):
            features.append(encoder.encode((loaded[0][None] + 1) / 2).cpu())
    if len(features) < 2:
        raise ValueError("fewer than 2 readable images to standardise the reference features with")
    stacked = torch.cat(features)
    return stacked.mean(dim=0), stacked.std(dim=0).clamp_min(1e-6)


@contextmanager
def _ema_weights(adapter: IQAAdapter, ema: dict[str, torch.Tensor] | None):
    """Within the block, the adapter holds its EMA weights (if EMA is on)."""
    if ema is None:
        yield
        return
    parameters = dict(adapter.named_parameters())
    saved = {name: parameter.detach().clone() for name, parameter in parameters.items()}
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(ema[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(saved[name])


def _resume_checkpoint(config: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to resume from (``None`` for a new run); refuses changed settings and unasked overwrites."""
    saved = load_train_config(out)
    if config.resume is None:
        if latest_checkpoint(out) is not None:
            raise ValueError(
                f"{out} already holds checkpoints of a run; continue it with --resume latest, or choose a new --out"
            )
        return None
    if config.resume == "latest":
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            return None  # nothing saved yet: start from the beginning (a killed first attempt, or a first run)
    else:
        checkpoint = Path(config.resume)
    if saved is not None:
        changes = config.changes_from(saved)
        if changes:
            raise ValueError(f"cannot resume {out}: settings differ from the saved run ({'; '.join(changes)})")
    return checkpoint


class Trainer:
    """One training run; :meth:`run` trains and exports the adapter."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.out = Path(config.out)
        # Mixed precision is done here (autocast, a gradient scaler for fp16) rather than by accelerate, whose
        # process-wide state cannot change precision between runs in one process.
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        device_type = self.accelerator.device.type
        self.autocast = (
            torch.autocast(device_type, dtype=WEIGHT_DTYPES[config.mixed_precision])
            if config.mixed_precision != "no"
            else nullcontext()
        )
        self.scaler = torch.amp.GradScaler(device_type) if config.mixed_precision == "fp16" else None
        self.resume_from = _resume_checkpoint(config, self.out)
        if self.accelerator.is_main_process:
            config.save(self.out)
        dtype = WEIGHT_DTYPES[config.mixed_precision]
        pipe = load_pipeline_for_training(config.base, self.accelerator.device, dtype)
        self.base = FrozenBase(pipe)
        self.pipe = pipe
        self.encoder = (
            ReferenceEncoder.from_spec(config.reference_features, device=self.accelerator.device)
            if config.reference_features
            else None
        )
        if self.encoder is not None and config.cache_dir:
            raise ValueError(
                "reference-feature training computes the features of each training image on the fly; "
                "train it without --cache-dir"
            )
        listing = list_training_samples(
            config.data, ScoreTable.load(config.scores) if config.scores else None, config.metrics
        )
        self.cache = self._prepare_cache() if config.cache_dir else None
        samples = listing.samples
        if self.cache is not None:
            samples = [sample for sample in samples if sample.key in self.cache]
        self.samples = samples
        self.listing = listing
        self.adapter = _make_adapter(config, pipe, samples, self.encoder)
        self.adapter.config.extra["training"] = config.recipe(self.accelerator.num_processes, len(samples))
        self.adapter.attach(pipe, scale=config.train_scale, cast=False)
        self.adapter.to(self.accelerator.device, torch.float32).requires_grad_(True)
        if config.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(
            self.adapter.parameters(),
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon,
            weight_decay=config.weight_decay,
        )
        self.module = self.accelerator.prepare(AdapterTrainingModule(pipe.unet, self.adapter))
        self.optimizer = optimizer
        self.ema = (
            {name: parameter.detach().clone() for name, parameter in self.adapter.named_parameters()}
            if config.ema_decay
            else None
        )
        # z-score normalisation of the scores (empty for a reference-based adapter)
        self.z_mean = torch.tensor([m.mean for m in self.adapter.config.metrics], dtype=torch.float32)
        self.z_std = torch.tensor([m.std for m in self.adapter.config.metrics], dtype=torch.float32)

    # ---------------------------------------------------------------- data
    def _prepare_cache(self) -> TrainingCache:
        config = self.config
        if config.crop != "center" or config.flip:
            raise ValueError(
                "the cache stores centre crops without flips; random crops and flips need training without --cache-dir"
            )
        build_cache(
            config.cache_dir,
            config.data,
            self.base,
            config.base,
            resolution=config.resolution,
            dtype=config.cache_dtype,
            num_workers=config.num_workers,
            progress=config.progress,
        )
        return TrainingCache(config.cache_dir, base_name=config.base, data=config.data, resolution=config.resolution)

    def _batches(self, start_micro_batch: int) -> Iterator[list[dict]]:
        config, state = self.config, self.accelerator.state
        sampler = StepSampler(
            len(self.samples),
            config.batch_size * state.num_processes,
            rank=state.process_index,
            world=state.num_processes,
            seed=config.seed,
            start=start_micro_batch,
        )
        items = (
            _CachedItems(self.samples, self.cache)
            if self.cache is not None
            else _OnTheFlyItems(self.samples, ImageTransform(config.resolution, config.crop, config.flip), config.seed)
        )
        loader = DataLoader(
            items,
            batch_sampler=sampler,
            num_workers=config.num_workers,
            collate_fn=list,
            persistent_workers=config.num_workers > 0,
        )
        return iter(loader)

    # ---------------------------------------------------------------- one micro-batch
    def _loss(self, items: list[dict]) -> tuple[torch.Tensor, int]:
        """The micro-batch's loss (sum of per-sample losses / nominal batch) and the number of samples used."""
        config, base, device = self.config, self.base, self.accelerator.device
        valid = [item for item in items if "skipped" not in item]
        if not valid:  # keep every process's backward in step: a zero loss that touches every adapter weight
            return sum(parameter.sum() for parameter in self.adapter.parameters()) * 0.0, 0
        draws = [item["draw"] for item in valid]

        def generators(stream: str) -> list[torch.Generator]:
            return [sample_generator(config.seed, draw, stream) for draw in draws]

        if self.cache is not None:
            cached = [item["cached"] for item in valid]
            parameters = torch.stack([value["latent_parameters"] for value in cached]).to(device)
            text = TextEmbeddings(*(t.to(device) if t is not None else None for t in cached_text(cached)))
            crops = cached_crops(cached)
        else:
            pixels = torch.stack([item["pixels"] for item in valid])
            parameters = base.encode_images(pixels)
            text = base.encode_text([item["caption"] for item in valid])
            crops = [item["crop"] for item in valid]
        latents = base.sample_latents(parameters, generators("latent"))
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators("noise")]).to(device)
        timesteps = torch.stack(
            [torch.randint(base.num_train_timesteps, (), generator=g) for g in generators("timestep")]
        ).to(device)
        drop_quality, drop_text = condition_drops(
            torch.stack([torch.rand((), generator=g) for g in generators("drop")]), config
        )

        if self.encoder is not None:  # the adapter learns the relation between an image and its own features
            features = self.adapter.condition_inputs(self.encoder.encode((pixels + 1) / 2))
        else:
            scores = torch.stack([item["scores"] for item in valid])
            features = self.adapter.condition_inputs((scores - self.z_mean) / self.z_std)
        features = torch.where(drop_quality[:, None], torch.zeros_like(features), features).to(device)
        text = text.where(drop_text.to(device), base.unconditional_text(len(valid)))
        dtype = base.unet.dtype
        text = TextEmbeddings(text.prompt_embeds.to(dtype), None if text.pooled is None else text.pooled.to(dtype))
        time_ids = base.time_ids(crops, config.resolution).to(device, dtype) if base.is_sdxl else None

        noisy = base.noise_scheduler.add_noise(latents, noise, timesteps)
        target = base.target(latents, noise, timesteps)
        with self.autocast:
            prediction = self.module(noisy.to(dtype), timesteps, text, features, time_ids)
        per_sample = (prediction.float() - target.float()).square().mean(dim=(1, 2, 3))
        return per_sample.sum() / config.batch_size, len(valid)

    # ---------------------------------------------------------------- the run
    def run(self) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        step = 0
        counters = {"skipped_images": 0, "samples": 0}
        if self.resume_from is not None:
            state = load_checkpoint(self.resume_from, adapter=self.adapter, optimizer=self.optimizer, ema=self.ema)
            step, counters = state["step"], state["counters"]
            if state["scaler"] is not None and self.scaler is not None:
                self.scaler.load_state_dict(state["scaler"])
            if accelerator.is_main_process:
                print(f"resumed from {self.resume_from} at step {step}")
        if accelerator.is_main_process and config.progress:
            print(
                f"training on {self.listing.summary()}"
                + (f"; {len(self.samples)} in the cache" if self.cache is not None else "")
            )
        logger = TrainLogger(self.out, resume_step=step, enabled=accelerator.is_main_process)
        batches = self._batches(step * config.gradient_accumulation)
        bar = tqdm(
            total=config.max_steps,
            initial=step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (config.progress and accelerator.is_main_process),
        )
        loss_value = float("nan")
        last_saved = step if self.resume_from is not None else None
        try:
            while step < config.max_steps:
                started = time.perf_counter()
                loss_value, used, skipped = self._optimizer_step(step, batches)
                step += 1
                counters["samples"] += used
                counters["skipped_images"] += skipped
                rate = used / max(time.perf_counter() - started, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", samples_per_s=f"{rate:.1f}")
                if step % config.log_every == 0 or step == config.max_steps:
                    logger.log(
                        step,
                        loss=loss_value,
                        lr=self.optimizer.param_groups[0]["lr"],
                        samples_per_s=rate,
                        skipped_images=counters["skipped_images"],
                    )
                if config.validation_every and step % config.validation_every == 0:
                    self._validate(step)
                if step % config.checkpoint_every == 0 or step == config.max_steps:
                    self._checkpoint(step, counters)
                    last_saved = step
        finally:
            bar.close()
            logger.close()
        if last_saved != step:
            self._checkpoint(step, counters)
        adapter_dir = self.out / "adapter"
        self.adapter.config.extra["training"]["steps"] = step
        if accelerator.is_main_process:
            with _ema_weights(self.adapter, self.ema):
                self.adapter.save_pretrained(adapter_dir)
            if config.progress:
                print(f"exported the adapter to {adapter_dir}; {counters['skipped_images']} unreadable images skipped")
        accelerator.wait_for_everyone()
        skipped = counters["skipped_images"] + (len(self.cache.skipped) if self.cache is not None else 0)
        return TrainResult(
            adapter_dir,
            step,
            loss_value,
            skipped,
            counters["samples"],
            self.listing.without_scores + self.listing.non_finite_scores,
        )

    def _optimizer_step(self, step: int, batches: Iterator[list[dict]]) -> tuple[float, int, int]:
        """One optimizer step over ``gradient_accumulation`` micro-batches: (mean loss, samples used, skipped)."""
        config, accelerator = self.config, self.accelerator
        total_loss, used, skipped = 0.0, 0, 0
        for micro in range(config.gradient_accumulation):
            items = next(batches)
            last = micro == config.gradient_accumulation - 1
            with nullcontext() if last else accelerator.no_sync(self.module):
                loss, count = self._loss(items)
                scaled = loss / config.gradient_accumulation
                (scaled if self.scaler is None else self.scaler.scale(scaled)).backward()
            total_loss += float(loss.detach()) * config.batch_size
            used += count
            skipped += len(items) - count
        factor = learning_rate_factor(config, step)
        for group in self.optimizer.param_groups:
            group["lr"] = config.learning_rate * factor
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), config.max_grad_norm)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for name, parameter in self.adapter.named_parameters():
                    self.ema[name].lerp_(parameter.detach(), 1.0 - config.ema_decay)
        totals = accelerator.reduce(
            torch.tensor([total_loss, used, skipped], dtype=torch.float64, device=accelerator.device), reduction="sum"
        )
        total_loss, used, skipped = totals.tolist()
        return total_loss / max(used, 1), int(used), int(skipped)

    def _validation_references(self) -> list[Image.Image]:
        """Centre crops of the first readable training images (at most 3), the validation references."""
        transform = ImageTransform(self.config.resolution, "center")
        references = []
        for sample in self.samples:
            loaded = load_training_image(sample, transform, None)
            if not isinstance(loaded, str):
                pixels = ((loaded[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
                references.append(Image.fromarray(pixels))
            if len(references) == 3:
                break
        return references

    def _checkpoint(self, step: int, counters: dict) -> None:
        accelerator = self.accelerator
        if accelerator.is_main_process:
            scaler = self.scaler.state_dict() if self.scaler is not None else None
            save_checkpoint(
                self.out,
                step,
                adapter=self.adapter,
                optimizer=self.optimizer,
                ema=self.ema,
                scaler_state=scaler,
                counters=counters,
            )
            prune_checkpoints(self.out, self.config.checkpoints_total_limit)
        accelerator.wait_for_everyone()

    @torch.no_grad()
    def _validate(self, step: int) -> None:
        """A grid: one row per validation prompt, columns at the p1, p50 and p99 targets of every metric (for a
        reference-based adapter: the first training images as references)."""
        if not self.accelerator.is_main_process or not self.config.validation_prompts:
            self.accelerator.wait_for_everyone()
            return
        from ..generation import generate

        config = self.config
        conditions: dict = {}
        if self.encoder is None:
            conditions["qualities"] = [
                dict.fromkeys(self.adapter.metric_names, target) for target in VALIDATION_PERCENTILES
            ]
            labels = [f"all metrics {target}" for target in VALIDATION_PERCENTILES]
        else:
            conditions["references"] = self._validation_references()
            conditions["reference_encoder"] = self.encoder
            labels = [f"reference {sample.key}"[:24] for sample in self.samples[: len(conditions["references"])]]
        with _ema_weights(self.adapter, self.ema), self.autocast:
            results = generate(
                self.pipe,
                self.adapter,
                config.validation_prompts,
                seed=config.seed,
                scale=self.adapter.config.default_scale,  # as generation will use it
                steps=config.validation_steps,
                guidance=config.validation_guidance,
                height=config.resolution,
                width=config.resolution,
                progress=False,
                **conditions,
            )
        grid = image_grid(
            [result.image for result in results],
            columns=len(labels),
            row_labels=[prompt[:40] for prompt in config.validation_prompts],
            column_labels=labels,
        )
        atomic_write(self.out / "validation" / f"step_{step:08d}.png", lambda path: grid.save(path, format="PNG"))
        self.accelerator.wait_for_everyone()


def train(config: TrainConfig) -> TrainResult:
    """Train an IQA-Adapter as ``config`` says (see :class:`TrainConfig`); resumable with ``resume="latest"``."""
    return Trainer(config).run()
