"""From quality scores to quality tokens.

Two stages, as in the paper (section 3.2.1) and the official code:

1. :func:`quality_features` (no parameters): z-scores -> feature vector, with the optional constant flag
   and the optional sinusoidal encoding gamma(x) of paper section 20, in the official code's layout.
2. A projection module (parameters): feature vector (N, F) -> T tokens (N, T, C) of the base model's
   cross-attention width. :class:`LinearProjection` (paper default) or :class:`MLPProjection`; their
   parameter names match the official checkpoints (``proj.*``, ``norm.*``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import IQAAdapterConfig


def quality_features(z: torch.Tensor, flag_feature: bool, encoding_frequencies: int) -> torch.Tensor:
    """Feature vector of z-scores ``z`` of shape (..., D).

    Layout (the official one): ``v = [z_1 .. z_D, 1.0 if flag]``; with L > 0 frequencies,
    ``[v, sin(2^l pi v_i) for i, l, cos(2^l pi v_i) for i, l]`` with the frequency index fastest.
    """
    if flag_feature:
        z = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)
    if encoding_frequencies == 0:
        return z
    frequencies = math.pi * 2.0 ** torch.arange(encoding_frequencies, device=z.device, dtype=z.dtype)
    angles = (z[..., :, None] * frequencies).flatten(-2)
    return torch.cat([z, torch.sin(angles), torch.cos(angles)], dim=-1)


class LinearProjection(nn.Module):
    """Linear(F -> T*C), reshape to (N, T, C), LayerNorm(C): the paper's projection."""

    def __init__(self, feature_dim: int, num_tokens: int, cross_attention_dim: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.cross_attention_dim = cross_attention_dim
        self.proj = nn.Linear(feature_dim, num_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(features).reshape(-1, self.num_tokens, self.cross_attention_dim)
        return self.norm(tokens)


class MLPProjection(LinearProjection):
    """Linear(F -> H), GELU, Linear(H -> T*C), reshape, LayerNorm(C): the official MLP variant."""

    def __init__(self, feature_dim: int, num_tokens: int, cross_attention_dim: int, hidden_dim: int = 128):
        super().__init__(feature_dim, num_tokens, cross_attention_dim)
        self.proj = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, num_tokens * cross_attention_dim),
        )


def build_projection(config: IQAAdapterConfig) -> LinearProjection:
    """The projection module an adapter config describes."""
    if config.projection == "mlp":
        return MLPProjection(config.feature_dim, config.num_tokens, config.cross_attention_dim, config.mlp_hidden_dim)
    return LinearProjection(config.feature_dim, config.num_tokens, config.cross_attention_dim)
