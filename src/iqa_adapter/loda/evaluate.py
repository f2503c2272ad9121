"""IQA evaluation as in the paper: correlation metrics, multi-crop prediction, summaries over splits.

* SRCC and KRCC: rank correlations of the raw predictions with the MOS (scipy ``spearmanr``, ``kendalltau``).
* PLCC and RMSE: after mapping the predictions to the MOS scale with the VQEG 4-parameter logistic
  ``yhat = b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))`` fitted by least squares (scipy ``curve_fit``,
  start ``[max y, min y, mean x, 0.5]``); if the fit does not converge, a straight-line fit is used instead.
* Prediction averages the scores of ``crops`` crops per image: random ones (15, the paper's protocol,
  seeded per image) or a deterministic uniform grid, taken after the model's pre-processing (its config's
  ``resize``, as in training).
* :func:`score_images` scores a batch of images already in memory the way the registry metric
  ``loda:<dir>`` does (the same crop positions in every image, each distinct position scored once).
* All of these use the network's raw cosine scores: the linear calibration of a checkpoint
  (:mod:`iqa_adapter.loda.calibration`) changes neither SRCC nor KRCC, and PLCC and RMSE are computed after
  the logistic fit, which absorbs a linear map.
* Over splits, each metric is summarised by its median (what the paper's tables report) and mean +- std
  (population standard deviation).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import expit
from torch.utils.data import DataLoader

from .data import EvalCrops, IQATable, crop_positions, prepare_images, take_crops
from .preprocess import Resize

if TYPE_CHECKING:
    from .model import LoDa

METRICS = ("srcc", "plcc", "krcc", "rmse")
LOGISTIC_PARAMETERS = 4


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The VQEG 4-parameter logistic mapping."""
    return b2 + (b1 - b2) * expit((x - b3) / np.abs(b4))


def _logistic4_jacobian(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """Derivatives of :func:`logistic4` in (b1, b2, b3, b4), (len(x), 4)."""
    s = expit((x - b3) / np.abs(b4))
    slope = (b1 - b2) * s * (1 - s)
    return np.stack([s, 1 - s, -slope / np.abs(b4), -slope * (x - b3) * np.sign(b4) / b4**2], axis=1)


def fit_logistic(predictions: np.ndarray, mos: np.ndarray) -> np.ndarray:
    """The predictions mapped onto the MOS scale by the fitted 4-parameter logistic.

    The fit uses the analytic Jacobian: with finite differences it stalls when the mean prediction is
    about 0 (the start value of b3, and typical of LoDa's cosine scores in [-1, 1]). Fewer than 4 points
    (the logistic's parameters) get the straight-line fit.
    """
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(mos, dtype=np.float64)
    if len(x) >= LOGISTIC_PARAMETERS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)  # the covariance estimate of a degenerate fit
                params, _ = curve_fit(
                    logistic4, x, y, p0=[y.max(), y.min(), x.mean(), 0.5], jac=_logistic4_jacobian, maxfev=20000
                )
                mapped = logistic4(x, *params)
            if np.all(np.isfinite(mapped)):
                return mapped
        except (RuntimeError, ValueError):
            pass
    slope, intercept = np.polyfit(x, y, 1)
    return slope * x + intercept


def correlation_metrics(predictions, mos) -> dict[str, float]:
    """SRCC, PLCC (after the logistic fit), KRCC and RMSE (after the fit) of predictions against MOS."""
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(mos, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"need one prediction per score and at least 3 of them, got {x.shape} and {y.shape}")
    if np.ptp(x) == 0:  # constant predictions carry no ranking
        return {"srcc": float("nan"), "plcc": float("nan"), "krcc": float("nan"), "rmse": float(np.std(y))}
    mapped = fit_logistic(x, y)
    return {
        "srcc": float(stats.spearmanr(x, y)[0]),
        "plcc": float(stats.pearsonr(mapped, y)[0]) if np.ptp(mapped) > 0 else float("nan"),
        "krcc": float(stats.kendalltau(x, y)[0]),
        "rmse": float(np.sqrt(np.mean((mapped - y) ** 2))),
    }


@torch.no_grad()
def predict(
    model: LoDa,
    table: IQATable,
    indices: list[int],
    crops: int = 15,
    crop_mode: str = "random",
    seed: int = 0,
    batch_size: int = 64,
    workers: int = 0,
) -> np.ndarray:
    """Score of each image ``table.paths[i]``, ``i`` in ``indices``: the mean over its crops (model in eval
    mode; ``batch_size`` crops at a time, at least one image)."""
    was_training = model.training
    model.train(False)
    device = next(model.parameters()).device
    dataset = EvalCrops(table, indices, model.crop_size, crops, crop_mode, seed, resize=model.config.resize)
    loader = DataLoader(dataset, batch_size=max(1, batch_size // crops), num_workers=workers)
    scores = []
    for stacks in loader:  # (images, crops, 3, S, S)
        scores.append(model(stacks.flatten(0, 1).to(device)).view(len(stacks), crops).mean(dim=1).cpu())
    model.train(was_training)
    return torch.cat(scores).double().numpy()


def distinct_positions(positions: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[int]]:
    """The distinct crop positions, in order of first appearance, and how often each occurs."""
    counts: dict[tuple[int, int], int] = {}
    for position in positions:
        counts[position] = counts.get(position, 0) + 1
    return list(counts), list(counts.values())


def image_crops(
    images: torch.Tensor, size: int, crops: int, crop_mode: str, seed: int, resize: Resize | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The crops that score a batch (N, 3, H, W): the images are pre-processed (:func:`prepare_images`:
    ``resize``, then a shorter side below ``size`` upscaled to it), then ``crops`` positions are drawn once
    for the batch (``crop_mode``, ``numpy`` generator of ``seed``). Returns the distinct crops
    (N, k, 3, size, size) and the weight of each, (k,), summing to 1 (k = 1 for images of exactly the crop
    size, whatever ``crops``)."""
    images = prepare_images(images, size, resize)
    positions = crop_positions(*images.shape[-2:], size, crops, crop_mode, np.random.default_rng(seed))
    distinct, counts = distinct_positions(positions)
    weights = torch.tensor(counts, dtype=images.dtype, device=images.device) / crops
    return take_crops(images, size, distinct), weights


def score_images(
    model: LoDa, images: torch.Tensor, crops: int = 15, crop_mode: str = "uniform", seed: int = 0, batch_size: int = 64
) -> torch.Tensor:
    """Raw scores (N,) of images (N, 3, H, W) in [0, 1] on the model's device: the mean of the scores of
    ``crops`` crops after the model's pre-processing (see :func:`image_crops`), ``batch_size`` crops per
    forward pass. Gradients flow to the images when enabled; the model's train/eval mode is left as it is."""
    device = next(model.parameters()).device
    stacks, weights = image_crops(images.to(device), model.crop_size, crops, crop_mode, seed, model.config.resize)
    scores = torch.cat([model(chunk) for chunk in stacks.flatten(0, 1).split(batch_size)])
    return (scores.view(len(images), -1) * weights).sum(dim=1)


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median, mean and std over runs of each metric."""
    summary = {}
    for name in METRICS:
        values = np.array([run[name] for run in runs], dtype=np.float64)
        summary[name] = {
            "median": float(np.median(values)),
            "mean": float(values.mean()),
            "std": float(values.std()),
            "runs": len(values),
        }
    return summary


def format_summary(label: str, summary: dict[str, dict[str, float]]) -> str:
    """One line per run group: ``label  SRCC median (mean +- std)  PLCC ...``."""
    parts = [f"{name.upper()} {s['median']:.4f} ({s['mean']:.4f} +- {s['std']:.4f})" for name, s in summary.items()]
    return f"{label:<14} " + "  ".join(parts)
