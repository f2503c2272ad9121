"""Paired low/high-quality datasets with IQA-Adapter as a degradation model (paper section 5.1, supplement 13).

* :mod:`.generate`: :func:`make_pairs`, the high-quality image and degraded versions of it from the same prompt and
  initial noise, resumable by chunks and shared out between processes;
* :mod:`.filter`: the content filter that drops pairs whose content changed, keeping every value it measured;
* :mod:`.writers`: BasicSR's paired folders and webdataset shards;
* :mod:`.restoration`: does such data teach a restoration network? The toy world's experiment;
* :mod:`.cli`: ``iqa-adapter pairs``.
"""

from .filter import ContentFilter, FilterSettings, blurred_ssim
from .generate import (
    LowLevel,
    PairSettings,
    make_pairs,
    quality_levels,
    reference_levels,
)

__all__ = [
    "ContentFilter",
    "FilterSettings",
    "LowLevel",
    "PairSettings",
    "blurred_ssim",
    "make_pairs",
    "quality_levels",
    "reference_levels",
]
