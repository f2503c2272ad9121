"""Calibrated LoDa scores: a linear map of the raw cosine score onto the MOS scale of the training data.

LoDa's cosine head scores in [-1, 1] on an arbitrary scale: the norm-in-norm loss standardises the
predictions and the labels of each batch, so it is blind to any positive scale and shift of the
predictions, and the raw scores of two trainings (or of two datasets) are not comparable. Uses of a
quality metric that need a MOS-like scale (RelGain divides by the base image's score; adapter statistics
and reports read like pyiqa's scores) get a *calibrated* score instead:

    calibrated = a * raw + b,    (a, b) = argmin sum_i (a * raw_i + b - mos_i)^2

fitted by least squares once training has finished, on the training split only (no test image is seen),
with ``raw_i`` the score the metric gives image i (the average over ``crops`` crops, uniform grid by
default, after the model's pre-processing: exactly what ``loda:<dir>`` computes with its defaults,
:func:`~iqa_adapter.loda.evaluate.score_images`).

The fit is stored in the checkpoint's ``config.json`` under ``"calibration"``: ``a``, ``b``, the MOS range
of the training data (``mos_min``, ``mos_max``), the number of samples, the crops used, and the fit's RMSE
and Pearson correlation on the training data. :class:`~iqa_adapter.loda.metric.LoDaMetric` returns
calibrated scores by default and declares the training MOS range as its ``score_range`` (calibrated
scores can leave it slightly: it is the typical range, not a bound); ``calibrated=False`` gives the raw
cosine. Checkpoints without a calibration (made before it existed, or with ``calibration_crops=0``) give
raw scores, as before.

A linear map keeps the ranking (SRCC and KRCC are unchanged for ``a > 0``), PLCC, and differentiability
(the gradient is ``a`` times the raw one), so guidance and correlation evaluations are unaffected;
:mod:`iqa_adapter.loda.evaluate` always works with the raw scores.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data import IQATable, load_image
from .evaluate import image_crops, score_images

if TYPE_CHECKING:
    from .model import LoDa

CALIBRATION_KEY = "calibration"
logger = logging.getLogger("iqa_adapter.loda")


@dataclass(frozen=True)
class Calibration:
    """``calibrated = a * raw + b``, fitted on ``samples`` training images whose MOS spans
    [``mos_min``, ``mos_max``]."""

    a: float
    b: float
    mos_min: float
    mos_max: float
    samples: int
    crops: int = 15  # crops averaged per image for the raw scores of the fit
    crop_mode: str = "uniform"
    rmse: float = float("nan")  # of the calibrated scores against the training MOS
    plcc: float = float("nan")  # Pearson correlation of raw scores and training MOS (before any fit)
    split: str = "train"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.a) and np.isfinite(self.b)):
            raise ValueError(f"a calibration needs finite a and b, got a={self.a}, b={self.b}")

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        """Calibrated scores of raw cosine scores (any shape; differentiable)."""
        return raw * self.a + self.b

    @property
    def score_range(self) -> tuple[float, float]:
        """The MOS range of the training data: the typical range of calibrated scores."""
        return (self.mos_min, self.mos_max)

    @property
    def raw_bounds(self) -> tuple[float, float]:
        """Where the raw range [-1, 1] maps to: the hard bounds of calibrated scores."""
        ends = sorted((self.b - self.a, self.b + self.a))
        return (ends[0], ends[1])

    def to_dict(self) -> dict:
        return {
            key: (None if isinstance(value, float) and not np.isfinite(value) else value)
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: (float("nan") if value is None else value) for key, value in data.items() if key in known}
        return cls(**values)


def fit_calibration(raw, mos, crops: int = 15, crop_mode: str = "uniform") -> Calibration:
    """Least-squares line ``mos ~ a * raw + b`` of raw scores against MOS (1-D, same length, >= 2).

    Raw scores without spread (an untrained or collapsed model) give ``a = 0`` and ``b = mean(mos)``, with a
    warning; a negative slope (a model ranking its own training data upside down) is kept, with a warning.
    """
    x, y = np.asarray(raw, dtype=np.float64), np.asarray(mos, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(
            f"a calibration needs one raw score per MOS and at least 2 of them, got {x.shape} and {y.shape}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("a calibration needs finite raw scores and MOS")
    spread = x - x.mean()
    if np.ptp(x) == 0:
        logger.warning("calibration: the raw scores are constant; calibrated scores will all be mean(MOS)")
        a, plcc = 0.0, float("nan")
    else:
        a = float((spread * (y - y.mean())).sum() / (spread**2).sum())
        plcc = float(np.corrcoef(x, y)[0, 1]) if np.ptp(y) > 0 else float("nan")
        if a < 0:
            logger.warning(
                "calibration: the raw scores fall as the training MOS rises (slope %.4g); the "
                "calibrated scores follow the MOS, the raw ones are reversed",
                a,
            )
    b = float(y.mean() - a * x.mean())
    rmse = float(np.sqrt(np.mean((a * x + b - y) ** 2)))
    return Calibration(
        a=a,
        b=b,
        mos_min=float(y.min()),
        mos_max=float(y.max()),
        samples=len(x),
        crops=crops,
        crop_mode=crop_mode,
        rmse=rmse,
        plcc=plcc,
    )


@torch.no_grad()
def raw_table_scores(
    model: LoDa,
    table: IQATable,
    indices: list[int],
    crops: int = 15,
    crop_mode: str = "uniform",
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """Raw scores of the images ``table.paths[i]``, ``i`` in ``indices``, exactly as the registry metric
    ``loda:<dir>`` computes them (model in eval mode; images of one size are scored together)."""
    was_training = model.training
    model.train(False)
    images = [load_image(table.paths[row]) for row in indices]
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for position, image in enumerate(images):
        by_shape[tuple(image.shape)].append(position)
    scores = np.empty(len(indices), dtype=np.float64)
    for positions in by_shape.values():
        # every image of one shape has the same crop positions: as many images per pass as fill a batch
        distinct = image_crops(
            images[positions[0]][None], model.crop_size, crops, crop_mode, seed, model.config.resize
        )[1].numel()
        per_pass = max(1, batch_size // distinct)
        for start in range(0, len(positions), per_pass):
            chunk = positions[start : start + per_pass]
            batch = torch.stack([images[p] for p in chunk])
            scores[chunk] = score_images(model, batch, crops, crop_mode, seed, batch_size).double().cpu().numpy()
    model.train(was_training)
    return scores


def calibrate(
    model: LoDa,
    table: IQATable,
    indices: list[int],
    crops: int = 15,
    crop_mode: str = "uniform",
    seed: int = 0,
    batch_size: int = 64,
) -> Calibration:
    """Fit the calibration of a trained model on the rows ``indices`` of ``table`` (its training split)."""
    raw = raw_table_scores(model, table, indices, crops, crop_mode, seed, batch_size)
    return fit_calibration(raw, table.mos[list(indices)], crops=crops, crop_mode=crop_mode)


def read_calibration(meta: dict) -> Calibration | None:
    """The calibration in a parsed checkpoint ``config.json``, or None when it has none."""
    data = meta.get(CALIBRATION_KEY)
    return Calibration.from_dict(data) if data else None
