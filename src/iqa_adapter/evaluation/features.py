"""Feature extractors for Frechet distances (FD-DINOv2, CLIP, Inception FID) and the CLIP image encoder.

A :class:`FeatureExtractor` maps RGB float images (N, 3, H, W) in [0, 1], of any size, to float32 feature
vectors (N, D). Each extractor resizes and normalises inside, as documented on its class, and runs in slices of
``max_batch`` images without gradients. :meth:`FeatureExtractor.describe` says which model, weights and
preprocessing produced the features: reference statistics are cached under it.

:func:`create_extractor` builds one from a spec:

* ``dinov2`` / ``dinov2:<hub id or folder>``: DINOv2 ViT-L/14 (``facebook/dinov2-large``) through transformers,
  as FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative model evaluation metrics", dgm-eval);
* ``clip`` / ``clip:<hub id or folder>``: CLIP image embeddings (``openai/clip-vit-large-patch14``);
* ``inception`` / ``inception:<weights file>``: the Inception-v3 of FID through torch-fidelity (optional extra);
* ``features:<metric>:<layers>``: pooled activations of any registry metric
  (:class:`iqa_adapter.reference.ReferenceEncoder`), e.g. ``features:loda:checkpoints/loda:cls``.

Hub ids go through :func:`iqa_adapter.hub.loading_options`: offline, a model missing from the local cache fails
at once with :func:`iqa_adapter.hub.not_found_message`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..hub import error_first_line, is_local, loading_options, not_found_message
from ..metrics.base import check_images
from ..metrics.pyiqa_backend import MetricUnavailableError
from ..reference import ReferenceEncoder

DEFAULT_DINOV2 = "facebook/dinov2-large"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DINOV2_INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_BATCH = 64
FID_EXTRA_HINT = "pip install 'iqa-adapter[fid]' (torch-fidelity, which needs a torchvision that loads with this torch)"
SPECS = (
    "dinov2",
    "dinov2:<hub id or folder>",
    "clip",
    "clip:<hub id or folder>",
    "inception",
    "inception:<weights file>",
    "features:<metric>:<layers>",
)

__all__ = [
    "ClipExtractor",
    "Dinov2Extractor",
    "FeatureExtractor",
    "InceptionExtractor",
    "MetricFeatureExtractor",
    "create_extractor",
    "load_pretrained",
]


# ---------------------------------------------------------------- helpers


def load_pretrained(model_class, name: str, what: str):
    """``model_class.from_pretrained(name)`` (a model or a tokenizer); hub ids load from the cache while offline,
    and every failure is a one-line ValueError naming ``what`` and the fix."""
    options = loading_options(name)
    try:
        return model_class.from_pretrained(name, **options)
    except (OSError, ValueError) as error:
        if options.get("local_files_only"):
            raise ValueError(not_found_message(name, what)) from None
        raise ValueError(
            f"cannot load {what} {name!r} ({error_first_line(error)}); give a model folder or a hub id"
        ) from None


def model_source(name: str) -> str:
    """How reports and cache keys name a model: a local folder by its absolute path, a hub id as given."""
    return str(Path(name).expanduser().absolute()) if is_local(name) else name


def weights_fingerprint(module: nn.Module) -> str:
    """A hash of every tensor of ``module``'s state dict (names, dtypes, shapes, values): different weights under the
    same folder or hub id give another fingerprint."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def resize_bicubic(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images resized to (height, width) with antialiased bicubic interpolation (PIL's filter, a = -0.5), clamped
    to [0, 1]."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)


def resize_shorter_and_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's preprocessing geometry: the shorter side resized to ``size`` (bicubic, the longer side to
    ``int(size * long / short)``), then the centre ``size`` x ``size`` crop, as transformers' CLIPImageProcessor."""
    height, width = images.shape[-2:]
    short, long = min(height, width), max(height, width)
    resized_long = int(size * long / short)
    new_size = (size, resized_long) if height <= width else (resized_long, size)
    images = resize_bicubic(images, new_size)
    top, left = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    return images[..., top : top + size, left : left + size]


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(images - mean) / std`` per channel."""
    mean_tensor = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std_tensor = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean_tensor) / std_tensor


# ---------------------------------------------------------------- extractors


class FeatureExtractor(nn.Module):
    """Images (N, 3, H, W), float in [0, 1], any size -> float32 features (N, ``feature_dim``).

    Subclasses set ``name`` and ``feature_dim``, implement :meth:`extract` (one slice, already on the
    extractor's device) and :meth:`preprocessing` (what :meth:`describe` reports).
    """

    name: str = "features"
    feature_dim: int
    max_batch: int = MAX_BATCH

    @property
    def device(self) -> torch.device:
        tensor = next(iter(self.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def extract(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def preprocessing(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if len(check_images(images, self.name)) == 0:
            return torch.empty(0, self.feature_dim, device=self.device)
        return self.in_slices(images, self.extract)

    @torch.no_grad()
    def in_slices(self, images: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor | tuple]):
        """``function`` applied to slices of at most ``max_batch`` images (at least one) on this extractor's device,
        the outputs (a tensor, or a tuple of tensors) concatenated as float32."""
        if len(check_images(images, self.name)) == 0:
            raise ValueError(f"{self.name}: no images given")
        outputs = [function(part.to(self.device, torch.float32)) for part in images.split(self.max_batch)]
        if isinstance(outputs[0], tuple):
            return tuple(torch.cat(parts).float() for parts in zip(*outputs))
        return torch.cat(outputs).float()

    @functools.cached_property
    def fingerprint(self) -> str:
        """:func:`weights_fingerprint` of this extractor (computed once)."""
        return weights_fingerprint(self)

    def describe(self) -> dict:
        """What produces the features (model, weights fingerprint, preprocessing): a cache key, and for reports."""
        return {
            "extractor": self.name,
            "feature_dim": self.feature_dim,
            **self.preprocessing(),
            "weights": self.fingerprint,
        }


class Dinov2Extractor(FeatureExtractor):
    """FD-DINOv2 features: the CLS token of DINOv2's final layer norm (transformers' ``pooler_output``).

    Preprocessing as dgm-eval (Stein et al. 2023): the image is resized to 224 x 224 without keeping its aspect
    ratio, bicubic (dgm-eval applies torchvision's ``Resize((224, 224), BICUBIC)`` to PIL images, i.e. PIL's
    antialiased bicubic; here ``torch``'s antialiased bicubic, the same filter without PIL's rounding to 8 bits),
    then normalised with the ImageNet mean and std. dgm-eval's model is ``dinov2_vitl14`` from torch hub, whose
    ``forward`` returns the normed CLS token; ``facebook/dinov2-large`` holds the same ViT-L/14 weights for
    transformers (whose port may differ from torch hub's code in round-off, e.g. in the position-embedding
    interpolation).
    """

    name = "dinov2"

    def __init__(self, model: str = DEFAULT_DINOV2, device: str | torch.device | None = None):
        super().__init__()
        from transformers import Dinov2Model

        self.source = model_source(model)
        self.model = load_pretrained(Dinov2Model, model, "the DINOv2 model").eval().requires_grad_(False)
        if device is not None:
            self.model.to(device)
        self.feature_dim = int(self.model.config.hidden_size)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        pixels = normalise(resize_bicubic(images, (DINOV2_INPUT_SIZE, DINOV2_INPUT_SIZE)), IMAGENET_MEAN, IMAGENET_STD)
        return self.model(pixel_values=pixels).pooler_output

    def preprocessing(self) -> dict:
        return {
            "model": self.source,
            "input_size": DINOV2_INPUT_SIZE,
            "resize": "antialiased bicubic to 224x224, aspect ratio not kept (dgm-eval)",
            "normalisation": "ImageNet mean and std",
            "output": "CLS token after the final layer norm",
        }


class ClipExtractor(FeatureExtractor):
    """CLIP image embeddings: ``CLIPModel.get_image_features`` (the projected pooled output, not normalised).

    Preprocessing as transformers' CLIPImageProcessor, in torch: the shorter side resized to the model's input size
    (224 for ViT-L/14) with antialiased bicubic interpolation, the centre square cropped, then normalised with
    CLIP's mean and std. The processor rounds to 8 bits after resizing; here the images stay float.

    ``clip_model``: an already loaded ``CLIPModel`` to share (:class:`iqa_adapter.evaluation.fidelity.ClipScorer`
    does); ``model`` then only names it.
    """

    name = "clip"

    def __init__(self, model: str = DEFAULT_CLIP, device: str | torch.device | None = None, *, clip_model=None):
        super().__init__()
        from transformers import CLIPModel

        self.source = model_source(model)
        clip_model = clip_model if clip_model is not None else load_pretrained(CLIPModel, model, "the CLIP model")
        self.model = clip_model.eval().requires_grad_(False)
        if device is not None:
            self.model.to(device)
        self.input_size = int(self.model.config.vision_config.image_size)
        self.feature_dim = int(self.model.config.projection_dim)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        pixels = normalise(resize_shorter_and_crop(images, self.input_size), CLIP_MEAN, CLIP_STD)
        return pooled(self.model.get_image_features(pixel_values=pixels))

    def preprocessing(self) -> dict:
        return {
            "model": self.source,
            "input_size": self.input_size,
            "resize": "shorter side to the input size (antialiased bicubic), centre crop (CLIPImageProcessor)",
            "normalisation": "CLIP mean and std",
            "output": "projected image embedding (get_image_features)",
        }


def pooled(output) -> torch.Tensor:
    """The embedding from ``get_image_features`` / ``get_text_features``: a tensor in transformers 4, an output with
    ``pooler_output`` in transformers 5."""
    return output if torch.is_tensor(output) else output.pooler_output


class InceptionExtractor(FeatureExtractor):
    """FID features: the 2048-d pool3 activations of the TensorFlow FID Inception-v3, through torch-fidelity.

    torch-fidelity's conventions, which reproduce the original TensorFlow FID and Inception Score: images are
    quantised to 8 bits (``round(x * 255)``), resized to 299 x 299 with torch-fidelity's port of TensorFlow 1.x
    bilinear resizing (no antialiasing), and scaled to [-1, 1]. clean-fid's "clean" mode (PIL bicubic resize) gives
    other values; FIDs of the two conventions are not comparable. :meth:`features_and_logits` also returns the
    1008 unbiased logits that torch-fidelity's Inception Score uses.

    Needs the optional extra (``pip install 'iqa-adapter[fid]'``), and the network weights: torch-fidelity's
    release file, downloaded once into the torch hub cache where torch-fidelity keeps it, or the file given. The
    file is first read with ``torch.load(weights_only=True)`` (tensors only) and refused if it holds anything else,
    since torch-fidelity then unpickles it in full.
    """

    name = "inception"
    feature_dim = 2048

    def __init__(self, weights: str | None = None, device: str | torch.device | None = None):
        super().__init__()
        network_class = _torch_fidelity_inception()
        path = _checked_inception_weights(weights)
        self.network = network_class(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
        )
        self.weights = str(path.absolute())
        if device is not None:
            self.network.to(device)

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool3 features (N, 2048) and unbiased logits (N, 1008), for FID and Inception Score in one pass."""
        return self.in_slices(images, self._both)

    def _both(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.network(images.mul(255).round_().clamp_(0, 255).to(torch.uint8))

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        return self._both(images)[0]

    def preprocessing(self) -> dict:
        return {
            "model": f"torch-fidelity inception-v3-compat ({self.weights})",
            "input_size": 299,
            "resize": "8-bit quantisation, TensorFlow 1.x bilinear to 299x299 (torch-fidelity)",
            "normalisation": "(x - 128) / 128",
            "output": "pool3 (2048)",
        }


def _torch_fidelity_inception():
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as error:  # noqa: BLE001 - ImportError, or a broken torchvision raising at import time
        raise MetricUnavailableError(
            f"the inception feature extractor needs torch-fidelity, which is not importable "
            f"here ({' '.join(str(error).split())}); {FID_EXTRA_HINT}"
        ) from None
    return FeatureExtractorInceptionV3


def _checked_inception_weights(weights: str | None) -> Path:
    """The Inception weights file, checked to hold tensors only: the file given, or torch-fidelity's release file,
    downloaded once (atomically, by torch.hub) into the torch hub cache, where torch-fidelity itself caches it."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[1]
    if weights and not path.is_file():
        raise MetricUnavailableError(
            f"the Inception weights file {path} does not exist; give the path of "
            "torch-fidelity's weights-inception-2015-12-05 .pth file"
        )
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), progress=False)
        except OSError as error:  # offline
            raise MetricUnavailableError(
                f"cannot download the FID Inception weights ({' '.join(str(error).split())}); download them once "
                f"while online (they are kept in {path.parent}) or give the file as inception:<weights file>"
            ) from None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - an unpickling error for anything but tensors, or a broken file
        raise ValueError(
            f"{path} is not a plain state dict of tensors ({' '.join(str(error).split())[:200]}); "
            "refusing to unpickle it. Use torch-fidelity's released Inception weights"
        ) from None
    return path


def inception_available() -> bool:
    """Whether the ``inception`` extractor's package imports here."""
    try:
        _torch_fidelity_inception()
    except MetricUnavailableError:
        return False
    return True


class MetricFeatureExtractor(FeatureExtractor):
    """Pooled activations of a registry metric (:class:`iqa_adapter.reference.ReferenceEncoder`): tokens or
    spatial positions averaged, layers concatenated. The images go to the metric as given; it resizes them as it
    scores them."""

    name = "features"

    def __init__(self, spec: str, device: str | torch.device | None = None):
        super().__init__()
        self.encoder = ReferenceEncoder.from_spec(spec, device=device)
        self.source = spec
        self.feature_dim = int(self.encoder.feature_dim)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def preprocessing(self) -> dict:
        return {
            "model": self.source,
            "resize": "the metric's own",
            "normalisation": "the metric's own",
            "output": "activations averaged over tokens or positions, layers concatenated",
        }


def parse_extractor_spec(spec: str) -> tuple[str, str]:
    """``(kind, argument)`` of an extractor spec, checked without loading anything (a ValueError naming the valid
    specs otherwise), so that a typo fails before hours of generation."""
    kind, separator, argument = spec.partition(":")
    if separator and not argument:
        raise ValueError(f"feature extractor {spec!r} names no model after the ':'; valid: {', '.join(SPECS)}")
    if kind not in ("dinov2", "clip", "inception", "features") or (kind == "features" and not argument):
        raise ValueError(f"unknown feature extractor {spec!r}; valid: {', '.join(SPECS)}")
    return kind, argument


def create_extractor(spec: str = "dinov2", device: str | torch.device | None = None) -> FeatureExtractor:
    """The feature extractor named by ``spec`` (see :data:`SPECS` and this module's docstring) on ``device``
    (``None``: CPU)."""
    kind, argument = parse_extractor_spec(spec)
    if kind == "dinov2":
        return Dinov2Extractor(argument or DEFAULT_DINOV2, device=device)
    if kind == "clip":
        return ClipExtractor(argument or DEFAULT_CLIP, device=device)
    if kind == "inception":
        return InceptionExtractor(argument or None, device=device)
    return MetricFeatureExtractor(argument, device=device)
