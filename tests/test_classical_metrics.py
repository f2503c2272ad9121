"""Classical no-reference metrics against values worked out by hand (plain numpy or explicit arithmetic)."""

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from iqa_adapter.metrics import NotDifferentiableError, classical, create_metric, list_metrics

CLASSICAL = ["piqe", "sharpness", "noise", "blockiness", "colorfulness", "contrast"]
DIFFERENTIABLE = ["sharpness", "noise", "blockiness", "colorfulness", "contrast"]
LUMA = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])  # MATLAB's rgb2gray


def score(name, images):
    return create_metric(name).score(images)


def grey(array) -> torch.Tensor:
    """A (1, 3, H, W) float64 image with the same value in R, G and B."""
    array = torch.as_tensor(np.asarray(array, dtype=np.float64))
    return array.expand(3, -1, -1)[None].clone()


def texture(seed: int, height: int = 64, width: int = 64, finest: int = 16, decay: float = 0.5) -> torch.Tensor:
    """A random colour texture (1, 3, H, W) in [0, 1]: upsampled noise of 2, 4, ... ``finest`` cells a side,
    each octave weighted by cells ** -decay (smooth with the defaults)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.zeros(1, 3, height, width)
    for octave in range(1, int(math.log2(finest)) + 1):
        noise = torch.randn(1, 3, 2**octave, 2**octave, generator=generator)
        image += F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False) / 2 ** (octave * decay)
    return (0.5 + 0.15 * (image - image.mean()) / image.std()).clamp(0, 1)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = math.ceil(3 * sigma)
    kernel = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images.dtype)
    padded = F.pad(images, (radius,) * 4, mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


def add_noise(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=generator)).clamp(0, 1)


# ---------------------------------------------------------------- registry and shared behaviour


def test_registered_with_flags():
    infos = {info.name: info for info in list_metrics(include_pyiqa=False)}
    assert set(CLASSICAL) <= set(infos)
    for name in CLASSICAL:
        assert infos[name].description and infos[name].backend == "builtin"
        assert infos[name].differentiable == (name in DIFFERENTIABLE)
    assert [name for name in CLASSICAL if not infos[name].higher_is_better] == ["piqe", "noise", "blockiness"]


@pytest.mark.parametrize("name", CLASSICAL)
def test_batch_equals_single_images_on_non_square_images(name):
    images = torch.cat(
        [texture(1, 48, 80), add_noise(texture(2, 48, 80), 0.05), gaussian_blur(texture(3, 48, 80), 1.5)]
    )
    batch = score(name, images)
    single = torch.cat([score(name, image[None]) for image in images])
    assert batch.shape == (3,) and batch.dtype == torch.float32
    assert torch.allclose(batch, single, rtol=1e-4, atol=1e-5)
    assert len(set(batch.tolist())) == 3  # the three images differ, so must their scores


@pytest.mark.parametrize("name", CLASSICAL)
def test_scores_on_the_input_device(name):
    assert score(name, texture(0, 32, 32)).device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", CLASSICAL)
def test_cuda_matches_cpu(name):
    images = torch.cat([texture(0, 48, 64), add_noise(texture(1, 48, 64), 0.1)])
    on_gpu = score(name, images.cuda())
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), score(name, images), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_gradients_flow(name):
    images = texture(4, 32, 40).requires_grad_(True)
    create_metric(name).score_with_grad(images).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_contrast_and_colorfulness_gradients_finite_on_flat_images():
    for name in ("contrast", "colorfulness"):
        images = torch.full((1, 3, 16, 16), 0.5, requires_grad=True)
        create_metric(name).score_with_grad(images).sum().backward()
        assert torch.isfinite(images.grad).all()


def test_piqe_is_not_differentiable():
    with pytest.raises(NotDifferentiableError):
        create_metric("piqe").score_with_grad(texture(0, 32, 32))


@pytest.mark.parametrize(
    "name, size, message",
    [
        ("piqe", (15, 40), "16x16"),
        ("sharpness", (2, 9), "3x3"),
        ("noise", (9, 2), "3x3"),
        ("blockiness", (8, 20), "9x9"),
    ],
)
def test_too_small_images_are_refused(name, size, message):
    with pytest.raises(ValueError, match=message):
        score(name, torch.rand(1, 3, *size))


# ---------------------------------------------------------------- contrast and colorfulness


def test_contrast_by_hand():
    assert score("contrast", grey(np.full((8, 8), 0.7))).item() == 0
    half = np.zeros((6, 10))
    half[:, 5:] = 1
    assert score("contrast", grey(half)).item() == pytest.approx(0.5, abs=1e-6)
    # a red/green checkerboard: luma alternates between the red and green weights, standard deviation half the gap
    image = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 == 0
    image[0, 0][checker] = 1
    image[0, 1][~checker] = 1
    assert score("contrast", image).item() == pytest.approx((LUMA[1] - LUMA[0]) / 2, abs=1e-6)


def test_colorfulness_by_hand():
    assert score("colorfulness", grey(np.full((8, 8), 0.4))).item() == 0
    orange = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1).expand(1, 3, 8, 12)
    rg, yb = 255 - 127.5, (255 + 127.5) / 2  # constant: no spread, only the mean term
    assert score("colorfulness", orange).item() == pytest.approx(0.3 * math.hypot(rg, yb), rel=1e-5)

    red_blue = torch.zeros(1, 3, 8, 8)
    red_blue[0, 0, :, :4] = 1  # red: rg = 255, yb = 127.5
    red_blue[0, 2, :, 4:] = 1  # blue: rg = 0, yb = -255
    std_rg, std_yb = 127.5, (127.5 + 255) / 2
    mean_rg, mean_yb = 127.5, (127.5 - 255) / 2
    expected = math.hypot(std_rg, std_yb) + 0.3 * math.hypot(mean_rg, mean_yb)
    assert score("colorfulness", red_blue).item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- sharpness


def test_sharpness_of_a_step_edge_by_hand():
    height, width = 8, 11
    step = np.zeros((height, width))
    step[:, 5:] = 1
    # the Laplacian is +1 on the last dark column and -1 on the first bright one, 0 elsewhere:
    # 2 (H - 2) unit squares over the (H - 2)(W - 2) positions where the 3x3 kernel fits
    assert score("sharpness", grey(step)).item() == pytest.approx(2 / (width - 2), rel=1e-6)
    ramp = np.tile(np.linspace(0, 1, width), (height, 1))
    assert score("sharpness", grey(ramp)).item() == pytest.approx(0, abs=1e-10)


def test_more_blur_lowers_sharpness():
    image = texture(5, 64, 96)
    values = [score("sharpness", gaussian_blur(image, sigma)).item() for sigma in (0.5, 1.0, 2.0, 4.0)]
    assert score("sharpness", image).item() > values[0]
    assert values == sorted(values, reverse=True) and values[-1] < values[0] / 4


# ---------------------------------------------------------------- noise


def test_immerkaer_noise_by_hand():
    height, width = 6, 7
    checker = (np.arange(height)[:, None] + np.arange(width)[None, :]) % 2
    # at every position: 4 x + 4 corners x (same colour) - 2 x 4 edges y (other colour) = 8 (x - y) = +-8 * 255
    expected = math.sqrt(math.pi / 2) / 6 * 8 * 255
    assert score("noise", grey(checker)).item() == pytest.approx(expected, rel=1e-6)
    ramp = np.add.outer(np.linspace(0, 0.5, height), np.linspace(0, 0.4, width))
    assert score("noise", grey(ramp)).item() == pytest.approx(0, abs=1e-6)

    values = np.random.default_rng(0).random((height, width))
    y = 255 * values
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]])
    total = sum(
        abs((kernel * y[i - 1 : i + 2, j - 1 : j + 2]).sum()) for i in range(1, height - 1) for j in range(1, width - 1)
    )
    expected = math.sqrt(math.pi / 2) / (6 * (width - 2) * (height - 2)) * total
    assert score("noise", grey(values)).item() == pytest.approx(expected, rel=1e-6)


def test_more_noise_raises_the_noise_estimate():
    image = texture(6, 64, 64)
    values = [score("noise", add_noise(image, sigma)).item() for sigma in (0.0, 0.01, 0.03, 0.1)]
    assert values == sorted(values) and values[-1] > 5 * values[0]
    # on a smooth image the estimate tracks the added noise: independent noise of standard deviation 0.03 in
    # R, G and B gives luma noise of 255 * 0.03 * |(0.299, 0.587, 0.114)| = 5.11 grey levels
    assert values[2] == pytest.approx(255 * 0.03 * np.linalg.norm(LUMA), rel=0.1)


# ---------------------------------------------------------------- blockiness


def test_blockiness_by_hand():
    values = np.random.default_rng(1).random((11, 18))
    y = 255 * values
    boundary, inner = [], []
    for i in range(11):
        for j in range(17):  # step between column j and j + 1
            (boundary if (j + 1) % 8 == 0 else inner).append(abs(y[i, j + 1] - y[i, j]))
    for i in range(10):  # step between row i and i + 1
        for j in range(18):
            (boundary if (i + 1) % 8 == 0 else inner).append(abs(y[i + 1, j] - y[i, j]))
    expected = (np.mean(boundary) + 1) / (np.mean(inner) + 1)
    assert score("blockiness", grey(values)).item() == pytest.approx(expected, rel=1e-6)


def test_blockiness_falls_below_1_when_the_grid_is_smoother_than_the_blocks():
    """Content whose steps avoid the 8x8 grid: (0 + 1) / (A + 1) < 1, inside the declared range."""
    image = np.zeros((16, 16))
    image[:, 3::8] = 1.0  # vertical lines away from the grid columns 8k - 1 | 8k
    value = score("blockiness", grey(image)).item()
    low, high = create_metric("blockiness").score_range
    assert low <= value < 1


def test_blockiness_of_block_patterns_and_ramps():
    assert score("blockiness", grey(np.full((16, 16), 0.3))).item() == pytest.approx(1.0)
    # a ramp changes by the same step everywhere: boundary and inner steps are equal
    ramp = np.tile(np.linspace(0, 1, 32), (32, 1))
    assert score("blockiness", grey(ramp)).item() == pytest.approx(1.0, rel=1e-6)
    # constant 8x8 blocks: no step inside blocks, every step on the grid
    levels = np.random.default_rng(2).random((4, 4))
    blocks = np.kron(levels, np.ones((8, 8)))
    steps = np.concatenate([np.abs(np.diff(levels, axis=1)).ravel(), np.abs(np.diff(levels, axis=0)).ravel()])
    expected = 255 * steps.mean() + 1  # each of the 24 block edges is 8 pixels long: the mean is the mean step
    assert score("blockiness", grey(blocks)).item() == pytest.approx(expected, rel=1e-6)
    # shifting the pattern off the 8x8 grid removes the boundary steps
    assert score("blockiness", grey(blocks[4:, 4:])).item() < 1


def test_jpeg_compression_raises_blockiness():
    image = texture(7, 128, 128)
    pixels = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=10)
    decoded = torch.from_numpy(np.asarray(Image.open(buffer), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    original = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)[None]
    assert score("blockiness", decoded).item() > 1.2 * score("blockiness", original).item()


# ---------------------------------------------------------------- PIQE


def piqe_by_hand(rgb: np.ndarray, surround: str = "matlab") -> tuple[float, dict]:
    """PIQE of one RGB image (H, W, 3) with loops over blocks, as MATLAB's piqe computes it on an 8-bit image:
    rgb2gray rounded, padded by mirroring to multiples of 16, stretched; the noise criterion's surround is every
    column but 7 and 9 (MATLAB deletes column 7, then column 8 of the rest), or with ``surround="paper"`` every
    column but the two centre ones (7 and 8)."""
    y = np.round(255 * (rgb @ LUMA))
    y = np.pad(y, ((0, -y.shape[0] % 16), (0, -y.shape[1] % 16)), mode="symmetric")
    height, width = y.shape
    y = np.round(255 * y / y.max())
    profile = np.exp(-(np.arange(-3, 4) ** 2) / (2 * (7 / 6) ** 2))
    window = np.outer(profile, profile) / np.outer(profile, profile).sum()

    def local_mean(values):
        padded = np.pad(values, 3, mode="edge")
        return sum(window[i, j] * padded[i : i + height, j : j + width] for i in range(7) for j in range(7))

    mu = local_mean(y)
    mscn = (y - mu) / (np.sqrt(np.abs(local_mean(y * y) - mu**2)) + 1)
    total, counts = 0.0, {"active": 0, "noticeable": 0, "noisy": 0}
    for top in range(0, height, 16):
        for left in range(0, width, 16):
            block = mscn[top : top + 16, left : left + 16]
            variance = block.var(ddof=1)
            if variance <= 0.1:
                continue
            counts["active"] += 1
            edges = [block[0], block[-1], block[:, 0], block[:, -1]]
            noticeable = any(edge[start : start + 6].std(ddof=1) < 0.1 for edge in edges for start in range(11))
            outside = np.delete(block, [7, 9] if surround == "matlab" else [7, 8], axis=1)
            ratio = block[:, 7:9].std(ddof=1) / outside.std(ddof=1)
            sigma = math.sqrt(variance)
            noisy = sigma > 2 * abs(sigma - ratio) / max(sigma, ratio)
            counts["noticeable"] += noticeable
            counts["noisy"] += noisy
            total += noticeable * (1 - variance) + noisy * variance
    return 100 * (total + 1) / (counts["active"] + 1), counts


def test_piqe_of_flat_images_is_100():
    flats = torch.stack([torch.full((3, 32, 48), value) for value in (0.0, 0.5, 1.0)])
    assert score("piqe", flats).tolist() == [100.0, 100.0, 100.0]


def test_piqe_matches_the_block_criteria_by_hand():
    rng = np.random.default_rng(3)
    y = np.full((40, 70), 0.4)  # mirrored to 48 x 80: 3 x 5 blocks
    y[:16, :16] = 0.5 + 0.1 * rng.standard_normal((16, 16))  # a noise block
    y[:16, 24:32] = 0.8  # a sharp edge inside an otherwise flat block: noticeable distortion
    y[16:32, 32:64] = np.linspace(0.1, 0.9, 32)[None, :] + 0.02 * rng.standard_normal((16, 32))  # noisy ramp
    y[20:28, 4:12] = 0.0  # a dark square
    rgb = np.clip(y, 0, 1)[..., None] * np.array([1.0, 0.9, 0.8])
    expected, counts = piqe_by_hand(rgb)
    assert counts["active"] >= 3 and counts["noticeable"] >= 1 and counts["noisy"] >= 1 and counts["active"] < 15
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    assert score("piqe", image).item() == pytest.approx(expected, rel=1e-5)


def test_piqe_surround_is_matlabs_unless_told():
    """Blocks whose second centre column decides the noise criterion: MATLAB keeps it in the surround."""
    rng = np.random.default_rng(11)
    scores = {}
    for surround in ("matlab", "paper"):
        metric = create_metric("piqe", surround=surround)
        for seed in range(6):
            rgb = texture(seed, 48, 80, finest=32, decay=0.4)[0].permute(1, 2, 0).numpy().astype(np.float64)
            rgb = np.clip(rgb + 0.04 * rng.standard_normal(rgb.shape), 0, 1)
            expected, _ = piqe_by_hand(rgb, surround)
            value = metric.score(torch.from_numpy(rgb).permute(2, 0, 1)[None]).item()
            assert value == pytest.approx(expected, rel=1e-5), (surround, seed)
            scores.setdefault(seed, []).append(value)
    assert any(matlab != paper for matlab, paper in scores.values())  # the images tell the two apart
    with pytest.raises(ValueError, match="surround must be one of matlab, paper"):
        create_metric("piqe", surround="both")


def test_piqe_pads_by_mirroring_instead_of_cropping():
    """A 300 x 300 crop: 19 x 19 blocks over a mirrored 304 x 304 image (cropping to 288 x 288 drops blocks)."""
    rgb = texture(4, 300, 300, finest=64, decay=0.35)[0].permute(1, 2, 0).numpy().astype(np.float64)
    rgb = np.clip(rgb + 0.03 * np.random.default_rng(4).standard_normal(rgb.shape), 0, 1)
    expected, counts = piqe_by_hand(rgb)
    assert counts["active"] > 18 * 18
    assert score("piqe", torch.from_numpy(rgb).permute(2, 0, 1)[None]).item() == pytest.approx(expected, rel=1e-5)


def test_piqe_matches_by_hand_on_textures_and_ranks_distortions_worse():
    image = texture(8, 96, 128, finest=64, decay=0.3).double()
    distorted = [add_noise(image, 0.05, seed=1), add_noise(image, 0.15, seed=1), gaussian_blur(image, 2.0)]
    for candidate in (image, distorted[0]):
        expected, _ = piqe_by_hand(candidate[0].permute(1, 2, 0).numpy())
        assert score("piqe", candidate).item() == pytest.approx(expected, rel=1e-5)
    values = [score("piqe", candidate).item() for candidate in [image] + distorted]
    assert values[0] < values[1] < values[2] and values[0] < values[3]


# ---------------------------------------------------------------- working in steps of bounded memory

HUGE = 2**62  # pixels per step: every batch in one step, the whole-image computation


def step_sizes(images: torch.Tensor) -> list[int]:
    """Pixels per step that cut ``images`` into steps of one row (or block row), strips of a few rows, and
    groups of two whole images."""
    height, width = images.shape[-2:]
    return [1, 7 * width, 5 * height * width // 2]


AWKWARD_SHAPES = [
    (3, 37, 24),  # odd height, not a multiple of 8 or 16 rows: several strips per image
    (2, 16, 37),  # exactly one PIQE block row
    (1, 9, 21),
]  # the smallest Blockiness image


@pytest.mark.parametrize("name", CLASSICAL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scores_in_steps_equal_the_whole_image_scores(name, dtype, monkeypatch):
    metric = create_metric(name)
    for count, height, width in AWKWARD_SHAPES:
        if height < metric.min_size[0] or width < metric.min_size[1]:
            continue
        images = torch.cat([add_noise(texture(seed, height, width), 0.05, seed) for seed in range(count)]).to(dtype)
        monkeypatch.setattr(classical, "PIXELS_PER_STEP", HUGE)
        whole = metric(images)
        for pixels in step_sizes(images):
            monkeypatch.setattr(classical, "PIXELS_PER_STEP", pixels)
            in_steps = metric(images)
            if name == "piqe":  # per-block values, summed as on the whole image: identical
                assert torch.equal(in_steps, whole)
            else:
                rtol = 1e-5 if dtype == torch.float32 else 1e-12
                torch.testing.assert_close(in_steps, whole, rtol=rtol, atol=0)


def whole_image_formula(name: str, images: torch.Tensor) -> torch.Tensor:
    """Contrast or colourfulness of images (N, 3, H, W) computed over the whole image at once."""
    if name == "contrast":
        return (images * torch.as_tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1).var(dim=(-2, -1), correction=0).sqrt()
    red, green, blue = (255 * images).unbind(dim=1)
    rg, yb = red - green, (red + green) / 2 - blue
    spread = rg.var(dim=(-2, -1), correction=0) + yb.var(dim=(-2, -1), correction=0)
    return spread.sqrt() + 0.3 * (rg.mean(dim=(-2, -1)).square() + yb.mean(dim=(-2, -1)).square()).sqrt()


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_gradients_in_steps_equal_the_whole_image_gradients(name, monkeypatch):
    metric = create_metric(name)
    images = torch.cat([texture(seed, 29, 24) for seed in range(2)]).double()
    gradients = []
    for pixels in (HUGE, 1, 7 * 24):
        monkeypatch.setattr(classical, "PIXELS_PER_STEP", pixels)
        leaf = images.clone().requires_grad_(True)
        metric.score_with_grad(leaf).sum().backward()
        gradients.append(leaf.grad)
    if name in ("contrast", "colorfulness"):  # one step is not the whole-image formula: compare with that too
        leaf = images.clone().requires_grad_(True)
        whole_image_formula(name, leaf).sum().backward()
        gradients.append(leaf.grad)
    for gradient in gradients[1:]:
        torch.testing.assert_close(gradient, gradients[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "height, halo, multiple, rows",
    [(53, (0, 0), 1, None), (53, (0, 2), 1, 51), (64, (3, 3), 16, None), (40, (10, 10), 8, None)],
)
def test_strips_cover_every_row_once_within_the_budget(height, halo, multiple, rows, monkeypatch):
    images = torch.zeros(3, 3, height, 20)
    owned = rows or height
    for pixels in (1, 20 * 7, 20 * 30, HUGE):
        monkeypatch.setattr(classical, "PIXELS_PER_STEP", pixels)
        covered = torch.zeros(3, owned, dtype=torch.long)
        for strip in classical.strips(images, halo, multiple, rows):
            covered[strip.batch, strip.top : strip.bottom] += 1
            assert strip.start == max(strip.top - halo[0], 0) and strip.stop == min(strip.bottom + halo[1], height)
            assert strip.top % multiple == 0 and strip.bottom - strip.top >= min(multiple, owned)
            # pixels read: within the budget, or the smallest strip (one multiple of rows and the halo)
            assert strip.read(images)[:, 0].numel() <= max(pixels, (multiple + sum(halo)) * 20)
        assert (covered == 1).all()
    monkeypatch.setattr(classical, "PIXELS_PER_STEP", 1)
    assert len(list(classical.strips(images[:0], halo, multiple, rows))) == 1  # an empty batch: one empty step


@pytest.mark.parametrize("name", CLASSICAL)
def test_min_size_is_the_smallest_size_scored(name):
    metric = create_metric(name)
    height, width = metric.min_size
    assert torch.isfinite(metric.score(torch.rand(1, 3, height, width))).all()
    for smaller in ((height - 1, width), (height, width - 1)):
        if min(smaller) > 0:
            with pytest.raises(ValueError, match=f"{height}x{width}"):
                metric.score(torch.rand(1, 3, *smaller))


def test_separable_gaussian_equals_the_2d_window_with_replicated_borders():
    """MSCN's local mean, in two 1-D passes, equals the 7x7 window (MATLAB fspecial) correlated in 2-D."""
    maps = torch.rand(2, 2, 23, 31, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 255
    profile = classical.gaussian_profile()
    window = profile[:, None] * profile[None, :]
    expected = torch.cat([classical.filter2d(maps[:, i : i + 1], window, padding="replicate") for i in range(2)], 1)
    torch.testing.assert_close(classical.gaussian_replicate(maps), expected, rtol=1e-12, atol=1e-10)
