"""Full-reference similarity: SSIM (Wang et al. 2004) and MS-SSIM (Wang, Simoncelli and Bovik 2003).

Both compare distorted images with their clean references, (N, 3, H, W) float tensors on a common scale
(``data_range``: 1 for images in [0, 1]), and return one score per image in (-1, 1], 1 for identical images.
They are computed on each RGB channel and averaged over the channels, so that colour changes count (a
luma-only SSIM is blind to desaturation). They are differentiable. The synthetic IQA datasets of
:mod:`iqa_adapter.loda.synthetic` use them as pseudo-MOS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

K1, K2 = 0.01, 0.03  # stabilising constants of SSIM
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # finest to coarsest scale


def _gaussian_profile(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    offsets = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    profile = torch.exp(-(offsets**2) / (2 * sigma**2))
    return profile / profile.sum()


def _local_mean(images: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted mean over every window that fits inside the image ('valid' positions)."""
    channels = images.shape[1]
    rows = profile.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    cols = profile.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    return F.conv2d(F.conv2d(images, rows, groups=channels), cols, groups=channels)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images if images.dtype == torch.float64 else images.float()


def _check_pair(x: torch.Tensor, y: torch.Tensor, min_size: int, name: str, fix: str) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"{name}: expected two image batches of the same shape (N, C, H, W), got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if min(x.shape[-2:]) < min_size:
        raise ValueError(
            f"{name}: images must be at least {min_size}x{min_size} pixels, got {tuple(x.shape[-2:])}; {fix}"
        )


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, data_range: float, profile: torch.Tensor):
    """Per-position luminance term ``l`` and contrast-structure term ``cs`` (N, C, h, w)."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = _local_mean(x, profile), _local_mean(y, profile)
    var_x = _local_mean(x * x, profile) - mu_x**2
    var_y = _local_mean(y * y, profile) - mu_y**2
    cov = _local_mean(x * y, profile) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    return luminance, contrast_structure


def ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Mean SSIM per image (N,): Wang, Bovik, Sheikh and Simoncelli, IEEE TIP 2004.

    ``SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))`` with
    Gaussian-weighted local statistics (window 11, sigma 1.5, population variances), ``C1 = (0.01 L)^2``,
    ``C2 = (0.03 L)^2``, ``L = data_range``, averaged over the window positions that fit inside the image
    and over the channels. Unlike the authors' MATLAB code there is no automatic downscaling of large images.
    """
    _check_pair(x, y, window_size, "ssim", "use a smaller window_size")
    x, y = _as_float(x), _as_float(y)
    luminance, contrast_structure = _ssim_terms(x, y, data_range, _gaussian_profile(window_size, sigma, x))
    return (luminance * contrast_structure).mean(dim=(1, 2, 3))


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    scales: int = 5,
    window_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Multi-scale SSIM per image (N,): Wang, Simoncelli and Bovik, Asilomar 2003.

    ``MS-SSIM = SSIM_M^w_M * prod_{j<M} cs_j^w_j`` over ``scales`` scales (2x2 average pooling between
    scales), with the paper's weights (the first ``scales`` of them, renormalised to sum 1 when fewer than
    5); ``cs_j`` is the contrast-structure factor of SSIM and ``SSIM_M`` the full SSIM at the coarsest scale,
    both averaged over positions and channels. Negative means are clamped to 0 before the fractional
    powers. Images need at least ``window_size * 2 ** (scales - 1)`` pixels per side.
    """
    if not 1 <= scales <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"ms_ssim: scales must be 1..{len(MS_SSIM_WEIGHTS)}, got {scales}")
    _check_pair(x, y, window_size * 2 ** (scales - 1), "ms_ssim", "use fewer scales or ssim()")
    x, y = _as_float(x), _as_float(y)
    weights = x.new_tensor(MS_SSIM_WEIGHTS[:scales])
    weights = weights / weights.sum()
    profile = _gaussian_profile(window_size, sigma, x)
    result = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    for scale in range(scales):
        luminance, contrast_structure = _ssim_terms(x, y, data_range, profile)
        if scale == scales - 1:  # the coarsest scale contributes the whole SSIM, luminance included
            contrast_structure = luminance * contrast_structure
        result = result * contrast_structure.mean(dim=(1, 2, 3)).clamp_min(0) ** weights[scale]
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return result
