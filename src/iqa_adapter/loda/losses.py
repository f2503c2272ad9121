"""The training loss of LoDa: the PLCC-induced loss in its norm-in-norm form (Li et al., ACM MM 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def norm_in_norm_loss(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss of a batch of predictions (B,) against labels (B,), B >= 2; 0 for perfectly correlated ones.

    Both are standardised over the batch, ``p = (yhat - mean) / (std + 1e-8)`` and
    ``q = (y - mean) / (std + 1e-8)`` (population std); then ``loss0 = MSE(p, q) / 4``,
    ``rho = mean(p * q)`` (the batch PLCC), ``loss1 = MSE(rho * p, q) / 4`` and the loss is
    ``(loss0 + loss1) / 2``. ``loss0 = (1 - PLCC) / 2`` is the paper's Eq. 5; the labels get no gradient.
    """
    if predictions.shape != labels.shape or predictions.ndim != 1 or predictions.shape[0] < 2:
        raise ValueError(
            f"norm_in_norm_loss needs predictions and labels of one shape (B,), B >= 2; got "
            f"{tuple(predictions.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.detach().to(predictions.dtype)
    std_p, mean_p = torch.std_mean(predictions, unbiased=False)
    std_y, mean_y = torch.std_mean(labels, unbiased=False)
    p = (predictions - mean_p) / (std_p + EPS)
    q = (labels - mean_y) / (std_y + EPS)
    loss0 = F.mse_loss(p, q) / 4
    rho = (p * q).mean()
    loss1 = F.mse_loss(rho * p, q) / 4
    return (loss0 + loss1) / 2
