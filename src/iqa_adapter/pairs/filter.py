"""The content filter: does a degraded image still show what its high-quality partner shows?

A pair made from the same prompt and initial noise at two quality levels usually keeps its content, but a low
quality target can also change it (paper section 5.1: "appropriate filtering to exclude image pairs with unintended
content differences"). :class:`ContentFilter` measures every pair and keeps it only when all its checks pass; every
value is kept, so the thresholds can be judged afterwards. The checks (reasons of a dropped pair):

* ``ssim``: SSIM of blurred, downsampled copies of both images (:func:`blurred_ssim`) below ``min_ssim``. The
  copies keep the layout and drop the fine detail that degradations change (noise, blocks, blur);
* ``features``: cosine similarity of deep features (``features``: an extractor spec of
  :func:`~iqa_adapter.evaluation.features.create_extractor`, e.g. ``dinov2``) below ``min_feature_similarity``;
* ``clip_t``: the low-quality image's CLIP-T (``clip``: a CLIP model) more than ``max_clip_t_drop`` points below
  the high-quality image's: the degraded image no longer shows the prompt as well;
* ``prompt_hq``, ``prompt_lq``: a prompt-following check (``following_scorer``, e.g. the toy world's
  :class:`~iqa_adapter.toy.caption_check.ToyCaptionScorer`) finds that the image fails one of the prompt's tasks;
* ``not_degraded``: the low-quality image is not worse than the high-quality one by at least ``min_degradation``
  training-set standard deviations on every metric its level lowers (:func:`degradation`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..distortions import MAX_BLUR_SIGMA, distort
from ..metrics.full_reference import ssim
from ..stats import MetricStats
from ..validation import check_int, check_number

REASONS = ("ssim", "features", "clip_t", "prompt_hq", "prompt_lq", "not_degraded")
SSIM_WINDOW = 11


@dataclass
class FilterSettings:
    """Thresholds and models of the content filter (see the module); ``None`` switches a check off."""

    ssim_side: int = 64  # the copies are downsampled so that their shorter side is at most this many pixels
    ssim_blur: float = 0.5  # then blurred with a Gaussian of this sigma (pixels of the copy, 0 to 3)
    min_ssim: float | None = 0.5
    features: str | None = None  # deep features (dinov2, clip, features:<metric>:<layers>)
    min_feature_similarity: float = 0.5
    clip: str | None = None  # CLIP-T with this CLIP (hub id or folder)
    max_clip_t_drop: float = 3.0  # points of CLIP-T (100 x cosine)
    min_degradation: float | None = 0.0  # training-set standard deviations

    def __post_init__(self) -> None:
        check_int("ssim_side", self.ssim_side, SSIM_WINDOW)
        check_number("ssim_blur", self.ssim_blur, 0.0, MAX_BLUR_SIGMA)
        if self.min_ssim is not None:
            check_number("min_ssim", self.min_ssim, -1.0, 1.0)
        check_number("min_feature_similarity", self.min_feature_similarity, -1.0, 1.0)
        check_number("max_clip_t_drop", self.max_clip_t_drop, 0.0)
        if self.min_degradation is not None:
            check_number("min_degradation", self.min_degradation)
        if self.features is not None:
            from ..evaluation.features import parse_extractor_spec

            parse_extractor_spec(self.features)


def _downsampled(images: torch.Tensor, side: int) -> torch.Tensor:
    from ..evaluation.features import resize_bicubic

    height, width = images.shape[-2:]
    factor = min(1.0, side / min(height, width))
    return resize_bicubic(images, (max(1, round(height * factor)), max(1, round(width * factor))))


def blurred_ssim(x: torch.Tensor, y: torch.Tensor, side: int = 64, blur: float = 0.5) -> torch.Tensor:
    """SSIM (N,) of copies of two image batches (N, 3, H, W) in [0, 1]: downsampled (antialiased bicubic) so that
    the shorter side is at most ``side`` pixels, then blurred with a Gaussian of sigma ``blur`` pixels."""
    x, y = _downsampled(x.float(), side), _downsampled(y.float(), side)
    if blur > 0:
        x, y = (distort(images, "gaussian_blur", blur / MAX_BLUR_SIGMA) for images in (x, y))
    return ssim(x, y, window_size=min(SSIM_WINDOW, *x.shape[-2:]))


def degradation(
    hq: Mapping[str, np.ndarray], lq: Mapping[str, np.ndarray], lowered: Sequence[MetricStats]
) -> np.ndarray:
    """Per pair, how much worse the low-quality image scores than the high-quality one on the metrics its level lowers:
    the smallest oriented score difference in training-set standard deviations (positive: worse); NaN without
    lowered metrics (a reference level names none)."""
    count = len(next(iter(hq.values()))) if hq else 0
    if not lowered:
        return np.full(count, np.nan)
    gaps = [(hq[stats.name] - lq[stats.name]) / stats.std * (1 if stats.higher_is_better else -1) for stats in lowered]
    return np.min(np.stack(gaps), axis=0)


class ContentFilter:
    """Measures pairs and says why a pair is dropped (see the module). Models load on first use."""

    def __init__(
        self, settings: FilterSettings | None = None, following_scorer=None, device: str | torch.device | None = None
    ):
        self.settings = settings or FilterSettings()
        self.following_scorer = following_scorer
        self.device = torch.device(device or "cpu")
        self._features = self._clip = None

    def describe(self) -> dict:
        """The settings, and the prompt-following scorer's description (what a restart must not change)."""
        scorer = self.following_scorer.describe() if self.following_scorer is not None else None
        return {**asdict(self.settings), "following_scorer": scorer}

    def measure(
        self, hq: torch.Tensor, lq: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping]
    ) -> dict[str, np.ndarray]:
        """The filter's values of pairs (``hq[i]``, ``lq[i]``), image batches (N, 3, H, W) in [0, 1], with the prompt
        and prompt metadata of each pair."""
        settings = self.settings
        values = {"ssim": blurred_ssim(hq, lq, settings.ssim_side, settings.ssim_blur).double().numpy()}
        if settings.features:
            values["feature_similarity"] = 1 - self._feature_distance()(hq, lq).double().numpy()
        if settings.clip:
            scorer = self._clip_scorer()
            values["clip_t_hq"] = scorer.text_image(hq, prompts).double().cpu().numpy()
            values["clip_t_lq"] = scorer.text_image(lq, prompts).double().cpu().numpy()
        if self.following_scorer is not None:
            values["prompt_hq"] = self._following(hq, metadata)
            values["prompt_lq"] = self._following(lq, metadata)
        return values

    def reasons(self, values: Mapping[str, float]) -> list[str]:
        """Why the pair with these values (one pair's :meth:`measure` values, and its ``degradation``) is dropped;
        empty when it is kept."""
        settings = self.settings
        failed = {
            "ssim": settings.min_ssim is not None and not values["ssim"] >= settings.min_ssim,
            "features": "feature_similarity" in values
            and not values["feature_similarity"] >= settings.min_feature_similarity,
            "clip_t": "clip_t_hq" in values
            and not values["clip_t_hq"] - values["clip_t_lq"] <= settings.max_clip_t_drop,
            "prompt_hq": "prompt_hq" in values and values["prompt_hq"] < 1,
            "prompt_lq": "prompt_lq" in values and values["prompt_lq"] < 1,
            "not_degraded": settings.min_degradation is not None
            and np.isfinite(values.get("degradation", np.nan))
            and not values["degradation"] >= settings.min_degradation,
        }
        return [reason for reason in REASONS if failed[reason]]

    def _feature_distance(self):
        if self._features is None:
            from ..evaluation.distances import PairDistance

            self._features = PairDistance(f"features:{self.settings.features}", device=self.device)
        return self._features

    def _clip_scorer(self):
        if self._clip is None:
            from ..evaluation.fidelity import ClipScorer

            self._clip = ClipScorer(self.settings.clip, device=self.device)
        return self._clip

    def _following(self, images: torch.Tensor, metadata: Sequence[Mapping]) -> np.ndarray:
        """The share of each image's prompt-following tasks it passes (1: it shows the prompt)."""
        results = self.following_scorer.score(list(images), list(metadata))
        shares = []
        for result in results:
            tasks = result if isinstance(result, list) else [result]
            shares.append(np.mean([bool(task["correct"]) for task in tasks]))
        return np.array(shares, dtype=np.float64)
