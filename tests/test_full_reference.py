import numpy as np
import pytest
import torch

from iqa_adapter.distortions import distort
from iqa_adapter.metrics.full_reference import ms_ssim, ssim


def test_constant_images_match_the_closed_form():
    # no variance: SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.3, 0.7
    x, y = torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_one_window_by_hand():
    # an 11x11 image has exactly one window position: weighted statistics computed here with numpy
    rng = np.random.default_rng(0)
    x = rng.random((11, 11))
    y = np.clip(x + 0.2 * rng.standard_normal((11, 11)), 0, 1)
    offsets = np.arange(11) - 5
    g = np.exp(-(offsets**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2
    cov = (w * x * y).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    to_batch = lambda a: torch.from_numpy(a)[None, None].expand(1, 3, 11, 11)  # noqa: E731
    assert ssim(to_batch(x), to_batch(y)).item() == pytest.approx(expected, rel=1e-9)
    assert ssim(to_batch(x), to_batch(y), data_range=255.0).item() != pytest.approx(expected, rel=1e-3)


def test_identity_symmetry_and_degradation_order():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim(images, images), torch.ones(2))
    noisy = distort(images, "gaussian_noise", 0.3, torch.Generator().manual_seed(1))
    noisier = distort(images, "gaussian_noise", 0.9, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ssim(images, noisy), ssim(noisy, images))
    assert (ssim(images, noisier) < ssim(images, noisy)).all() and (ssim(images, noisy) < 1).all()
    grey = distort(images, "saturation", 1.0, torch.Generator().manual_seed(0))
    assert (ssim(images, grey) < 0.99).all(), "colour changes must lower the score"


def test_ms_ssim():
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    blurred = distort(images, "gaussian_blur", 0.5)
    torch.testing.assert_close(ms_ssim(images, images, scales=3), torch.ones(2))
    score = ms_ssim(images, blurred, scales=3)
    assert ((score > 0) & (score < 1)).all()
    # one scale is plain SSIM
    torch.testing.assert_close(ms_ssim(images, blurred, scales=1), ssim(images, blurred))
    with pytest.raises(ValueError, match="fewer scales"):
        ms_ssim(images, blurred, scales=5)


def test_gradients_and_errors():
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    target = images.clone().requires_grad_(True)
    (1 - ssim(images, target * 0.5)).sum().backward()
    assert target.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="same shape"):
        ssim(images, images[..., :8])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(images[..., :8, :8], images[..., :8, :8])
