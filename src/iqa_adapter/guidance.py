"""IQA-gradient guidance (paper section 3.1): steer sampling with the gradient of a quality metric.

At every denoising step the noise prediction is corrected with the gradient of the metric's log-score of
the decoded latent::

    eps_hat = eps(z_t | c) - alpha * omega(t) * grad_{z_t} log f(D(z_t))

``f`` is any differentiable registry metric (LoDa, the differentiable classical metrics, pyiqa metrics in
loss mode), ``D`` the VAE decoder, ``omega(t)`` rises linearly from 0 to 1 over sampling
(``omega = 1 - t / T`` with ``T`` the scheduler's training steps, so it also holds for img2img and for any
step count), and ``alpha`` is the guidance scale (paper: 30).

**Sign.** The paper writes ``+ alpha * omega * grad log f``. With the standard update of every
epsilon-prediction sampler, ``x0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t)``, adding the gradient to ``eps``
moves the predicted image *against* it and lowers the score; the usual implementations add the gradient of
the loss ``-log f`` instead. The sign here is the one that raises the metric (tested), i.e. that form.

**Score optimised.** ``log`` needs a positive argument, so the objective uses the metric's declared range
``(low, high)``: ``log(f - low)`` for higher-is-better metrics with a finite ``low``, ``log(high - f)`` for
lower-is-better metrics with a finite ``high`` (both clamped at 1e-6), and the plain score ``f`` (or ``-f``)
when that bound is infinite. For PIQE (0 best, 100 worst) this is ``log(100 - PIQE)``; for a calibrated LoDa
``log(f - lowest training MOS)``, for raw LoDa scores (cosine head in [-1, 1]) ``log(f + 1)``.

**Practicality.** The correction is a forward hook on the UNet, so it works inside an unmodified diffusers
pipeline call, under classifier-free guidance (both halves get the same correction, which the CFG
combination passes through unchanged), for SD 1.x/2.x and SDXL, with any scheduler (the hook sees the UNet's
input, which every scheduler scales to the DDPM ``z_t``), for epsilon- and v-prediction models. Only the
steps inside ``window`` (fractions of sampling, e.g. ``(0.5, 1.0)``) pay for a gradient; the decoder can run
with gradient checkpointing, and ``decode_scale < 1`` decodes a downsampled latent for a smaller image.
``benchmarks/bench_guidance.py`` measures the memory these options save.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .metrics import QualityMetric
from .metrics.base import NotDifferentiableError
from .validation import check_number

MIN_ARGUMENT = 1e-6


def guidance_objective(scores: torch.Tensor, metric: QualityMetric) -> torch.Tensor:
    """The quantity guidance raises, per image: a log of the distance from the metric's worst bound."""
    low, high = metric.score_range
    if metric.higher_is_better:
        return torch.log((scores - low).clamp_min(MIN_ARGUMENT)) if math.isfinite(low) else scores
    return torch.log((high - scores).clamp_min(MIN_ARGUMENT)) if math.isfinite(high) else -scores


@dataclass
class IQAGuidance:
    """IQA-gradient guidance with one metric; :meth:`applied` installs it on a pipeline for a block of calls.

    Args:
        metric: a differentiable quality metric (``create_metric("sharpness")``, ``loda:<dir>``, ...).
        alpha: guidance scale (paper: 30).
        window: (start, end) fractions of sampling where guidance acts (``omega`` still rises from 0 to 1
            over the whole of sampling).
        decode_scale: decode the latent downsampled by this factor (1 = full resolution).
        checkpointing: gradient checkpointing through the VAE decoder (less memory, one more decoder pass).
    """

    metric: QualityMetric
    alpha: float = 30.0
    window: tuple[float, float] = (0.0, 1.0)
    decode_scale: float = 1.0
    checkpointing: bool = True

    def __post_init__(self) -> None:
        if not self.metric.differentiable:
            raise NotDifferentiableError(
                f"gradient guidance needs a differentiable metric; {self.metric.name!r} is "
                "not (`iqa-adapter metrics` lists the differentiable ones)"
            )
        check_number("alpha", self.alpha)
        start, end = self.window
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"window must satisfy 0 <= start < end <= 1, got {self.window}")
        if not 0.0 < self.decode_scale <= 1.0:
            raise ValueError(f"decode_scale must lie in (0, 1], got {self.decode_scale}")
        self.last_scores: list[torch.Tensor] = []  # the metric's scores at each guided step (for inspection)

    def describe(self) -> dict:
        """The settings, for image sidecars."""
        return {
            "metric": self.metric.name,
            "alpha": self.alpha,
            "window": list(self.window),
            "decode_scale": self.decode_scale,
        }

    def omega(self, timestep: float, num_train_timesteps: int) -> float:
        """Weight of the correction at ``timestep``: 0 at the start of sampling, 1 at the end."""
        return 1.0 - float(timestep) / num_train_timesteps

    @contextmanager
    def applied(self, pipe):
        """Within the block, the pipeline's UNet outputs are corrected by the metric's gradient."""
        scheduler_config = pipe.scheduler.config
        alphas_cumprod = _alphas_cumprod(pipe.scheduler)
        vae = pipe.vae
        was_checkpointing = vae.is_gradient_checkpointing
        if self.checkpointing:
            vae.enable_gradient_checkpointing()

        def hook(unet, args, kwargs, output):
            sample = args[0] if args else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
            progress = self.omega(t, scheduler_config.num_train_timesteps)
            if not self.window[0] <= progress <= self.window[1] or self.alpha == 0:
                return None
            half = sample.shape[0] // 2
            if sample.shape[0] % 2 == 0 and torch.equal(sample[:half], sample[half:]):  # CFG: one gradient per image
                gradient = self._gradient(pipe, sample[:half]).repeat(2, 1, 1, 1)
            else:
                gradient = self._gradient(pipe, sample)
            correction = self.alpha * progress * gradient
            if scheduler_config.prediction_type == "v_prediction":
                correction = correction / alphas_cumprod[int(t)].sqrt()  # v = eps / sqrt(a_t) - (terms in z_t)
            elif scheduler_config.prediction_type != "epsilon":
                raise ValueError(
                    f"gradient guidance supports epsilon and v-prediction models, not "
                    f"{scheduler_config.prediction_type!r}"
                )
            corrected = output[0] if isinstance(output, tuple) else output.sample
            corrected = corrected - correction.to(corrected.dtype)
            if isinstance(output, tuple):
                return (corrected, *output[1:])
            output.sample = corrected
            return output

        handle = pipe.unet.register_forward_hook(hook, with_kwargs=True)
        self.last_scores = []
        try:
            yield self
        finally:
            handle.remove()
            if self.checkpointing and not was_checkpointing:
                vae.disable_gradient_checkpointing()

    def _gradient(self, pipe, sample: torch.Tensor) -> torch.Tensor:
        """grad_{z_t} of the objective, for every sample of the UNet batch (CFG halves share their latents)."""
        vae = pipe.vae
        with torch.enable_grad():
            latents = sample.detach().to(vae.dtype).requires_grad_(True)
            decoded_input = latents
            if self.decode_scale < 1.0:
                decoded_input = F.interpolate(latents, scale_factor=self.decode_scale, mode="bilinear", antialias=True)
            config = vae.config
            shift = getattr(config, "shift_factor", None) or 0.0
            images = vae.decode(decoded_input / config.scaling_factor + shift).sample
            images = ((images.float() + 1) / 2).clamp(0, 1)
            scores = self.metric.score_with_grad(images.to(self.metric.device))
            self.last_scores.append(scores.detach().cpu())
            objective = guidance_objective(scores, self.metric).sum()
            (gradient,) = torch.autograd.grad(objective, latents)
        return gradient.to(sample.dtype)


def _alphas_cumprod(scheduler) -> torch.Tensor:
    values = getattr(scheduler, "alphas_cumprod", None)
    if values is None:
        raise ValueError(
            f"{type(scheduler).__name__} exposes no alphas_cumprod; gradient guidance needs a DDPM-family "
            "noise schedule"
        )
    return values
