"""Small learned image models trained by this project: CNNIQA and a whole-image CNN; as metrics ``learned:<folder>``.

A folder holds ``config.json`` (:class:`LearnedModelConfig`) and ``model.safetensors``, as diffusers saves a
model. Two architectures:

* ``cnniqa``: CNNIQA (Kang et al., CVPR 2014), a no-reference IQA model: one 7x7 convolution, global max and
  min pooling, two fully connected layers. As in the paper, an image is cut into non-overlapping
  ``patch_size`` patches (the last row and column of patches are aligned to the far border) whose scores are
  averaged; an image no larger than a patch is one patch. The paper's local contrast normalisation of grey
  patches is ``normalise="local_contrast"``; the default keeps colour (``"none"``), which the toy world's
  saturation and colour distortions need.
* ``global_cnn``: an aesthetics-style (IAA, NIMA-like) model that sees the whole image, resized (bilinear) to
  ``input_size``: an optional full-resolution 3x3 convolution (``stem``), strided 3x3 convolutions, global
  average pooling and an MLP. With ``coordinates`` two
  channels holding x and y are added to the input (CoordConv, Liu et al. 2018), so the model can tell where
  things are: composition, not only texture.

A model predicts ``outputs`` numbers: one score (``task="score"``; the network predicts the standardised score,
``score = mean + std * output``) or the logits of ``classes`` (``task="classify"``). Scores are
differentiable (for guidance); :meth:`LearnedModel.features` gives the pooled features (``pooled``) and the
last hidden layer (``hidden``) for the reference-based adapter. :func:`fit` trains one on tensors (AdamW,
cosine schedule, horizontal flips), seeded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..io_utils import atomic_write, load_safetensors, read_json, reject_unknown_fields, write_json
from .base import QualityMetric, check_images
from .registry import MetricInfo

PREFIX = "learned:"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ARCHITECTURES = ("cnniqa", "global_cnn")
TASKS = ("score", "classify")
NORMALISATIONS = ("none", "local_contrast")
PATCHES_PER_PASS = 64  # CNNIQA: patch positions scored together (bounds memory on large images)


@dataclass(frozen=True)
class LearnedModelConfig:
    """Architecture, task and score scale of a learned model (saved as ``config.json`` beside the weights)."""

    architecture: str
    task: str = "score"
    description: str = ""
    patch_size: int = 32  # cnniqa: side of the scored patches
    kernels: int = 50  # cnniqa: filters of the 7x7 convolution (the paper: 50)
    normalise: str = "none"  # cnniqa: "local_contrast" = the paper's grey local contrast normalisation
    input_size: int = 32  # global_cnn: the image is resized to input_size x input_size
    channels: tuple[int, ...] = (32, 64, 96)  # global_cnn: one stride-2 3x3 convolution block each
    stem: int = 0  # global_cnn: width of a full-resolution 3x3 convolution block first (0: none)
    coordinates: bool = True  # global_cnn: x and y input channels
    hidden: int = 128  # width of the hidden fully connected layer(s) (the paper's CNNIQA: 800)
    classes: tuple[str, ...] = ()  # task "classify": class names, one logit each
    higher_is_better: bool = True
    score_mean: float = 0.0  # task "score": score = score_mean + score_std * network output
    score_std: float = 1.0
    score_range: tuple[float, float] = (0.0, 100.0)
    training: dict = field(default_factory=dict)  # how it was trained and tested (free form, for the record)

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("architecture", self.architecture, ARCHITECTURES),
            ("task", self.task, TASKS),
            ("normalise", self.normalise, NORMALISATIONS),
        ):
            if value not in valid:
                raise ValueError(f"learned model {name} must be one of {', '.join(valid)}, got {value!r}")
        if self.task == "classify" and len(self.classes) < 2:
            raise ValueError("a classifier needs at least two classes")

    @property
    def outputs(self) -> int:
        return len(self.classes) if self.task == "classify" else 1

    @classmethod
    def from_dict(cls, data: dict) -> LearnedModelConfig:
        reject_unknown_fields(cls, data, "learned model config")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def local_contrast_normalise(images: torch.Tensor, size: int = 3, eps: float = 1e-2) -> torch.Tensor:
    """CNNIQA's pre-processing: grey images minus their local mean, divided by their local standard deviation
    (``size`` x ``size`` box windows), as (N, 1, H, W)."""
    grey = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])[:, None]
    mean = F.avg_pool2d(grey, size, stride=1, padding=size // 2, count_include_pad=False)
    variance = F.avg_pool2d(grey.square(), size, stride=1, padding=size // 2, count_include_pad=False) - mean.square()
    return (grey - mean) / (variance.clamp_min(0).sqrt() + eps)


def patch_positions(images: torch.Tensor, patch: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The images (upscaled, bilinear, when smaller than a patch) and the (top, left) corners of non-overlapping
    ``patch`` x ``patch`` patches covering them; the last row and column are aligned to the far border."""
    height, width = images.shape[-2:]
    if min(height, width) < patch:
        scale = patch / min(height, width)
        images = F.interpolate(
            images,
            size=(max(patch, round(height * scale)), max(patch, round(width * scale))),
            mode="bilinear",
            align_corners=False,
        )
        height, width = images.shape[-2:]

    def starts(length: int) -> list[int]:
        return sorted({*range(0, length - patch + 1, patch), length - patch})

    return images, [(top, left) for top in starts(height) for left in starts(width)]


def patch_grid(images: torch.Tensor, patch: int) -> torch.Tensor:
    """The patches of :func:`patch_positions`, stacked: (N, P, C, patch, patch)."""
    images, positions = patch_positions(images, patch)
    return torch.stack([images[:, :, top : top + patch, left : left + patch] for top, left in positions], dim=1)


class CNNIQANet(nn.Module):
    """Kang et al. 2014: 7x7 convolution, global max and min pooling, two fully connected layers."""

    def __init__(self, config: LearnedModelConfig):
        super().__init__()
        self.config = config
        inputs = 1 if config.normalise == "local_contrast" else 3
        self.conv = nn.Conv2d(inputs, config.kernels, 7)
        self.fc1 = nn.Linear(2 * config.kernels, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.hidden)
        self.out = nn.Linear(config.hidden, config.outputs)
        self.dropout = nn.Dropout(0.5)

    def _patch_features(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of patches (M, C, patch, patch), one row each."""
        if self.config.normalise == "local_contrast":
            patches = local_contrast_normalise(patches)
        else:
            patches = patches * 2 - 1
        maps = self.conv(patches)
        pooled = torch.cat([maps.amax(dim=(2, 3)), -(-maps).amax(dim=(2, 3))], dim=1)
        hidden = F.relu(self.fc2(self.dropout(F.relu(self.fc1(pooled)))))
        return {"pooled": pooled, "hidden": hidden, "output": self.out(self.dropout(hidden))}

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features averaged over the patches, computed :data:`PATCHES_PER_PASS` patch positions at a time, so that
        memory stays bounded however large the images are."""
        patch = self.config.patch_size
        images, positions = patch_positions(images, patch)
        totals: dict[str, torch.Tensor] = {}
        for start in range(0, len(positions), PATCHES_PER_PASS):
            group = positions[start : start + PATCHES_PER_PASS]
            patches = torch.stack([images[:, :, top : top + patch, left : left + patch] for top, left in group], dim=1)
            features = self._patch_features(patches.flatten(0, 1))
            for key, value in features.items():
                summed = value.view(len(images), len(group), -1).sum(dim=1)
                totals[key] = totals[key] + summed if key in totals else summed
        return {key: total / len(positions) for key, total in totals.items()}


class GlobalCNNNet(nn.Module):
    """Whole-image CNN: stride-2 3x3 convolutions (optionally with x, y channels), global average pooling, MLP."""

    def __init__(self, config: LearnedModelConfig):
        super().__init__()
        self.config = config
        blocks, inputs = [], 3 + 2 * config.coordinates
        if config.stem:  # fine texture (noise, blocks, quantisation steps) before any downsampling
            blocks += [nn.Conv2d(inputs, config.stem, 3, padding=1), nn.SiLU()]
            inputs = config.stem
        for width in config.channels:
            blocks += [
                nn.Conv2d(inputs, width, 3, stride=2, padding=1),
                nn.GroupNorm(min(8, width), width),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.SiLU(),
            ]
            inputs = width
        self.body = nn.Sequential(*blocks)
        self.fc = nn.Linear(inputs, config.hidden)
        self.out = nn.Linear(config.hidden, config.outputs)

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self.config.input_size
        if tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = images * 2 - 1
        if self.config.coordinates:
            ramp = torch.linspace(-1, 1, size, device=images.device, dtype=images.dtype)
            y, x = torch.meshgrid(ramp, ramp, indexing="ij")
            images = torch.cat([images, x.expand(len(images), 1, -1, -1), y.expand(len(images), 1, -1, -1)], dim=1)
        pooled = self.body(images).mean(dim=(2, 3))
        hidden = F.silu(self.fc(pooled))
        return {"pooled": pooled, "hidden": hidden, "output": self.out(hidden)}


NETWORKS = {"cnniqa": CNNIQANet, "global_cnn": GlobalCNNNet}


class LearnedModel(nn.Module):
    """A network of :data:`NETWORKS` with its config: ``forward`` gives scores (N,) or logits (N, classes)."""

    def __init__(self, config: LearnedModelConfig):
        super().__init__()
        self.config = config
        self.network = NETWORKS[config.architecture](config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.network.forward_features(images)["output"]
        if self.config.task == "classify":
            return output
        return self.config.score_mean + self.config.score_std * output[:, 0]

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pooled`` (after global pooling) and ``hidden`` (the last hidden layer) activations."""
        features = self.network.forward_features(images)
        return {"pooled": features["pooled"], "hidden": features["hidden"]}

    def save_pretrained(self, folder: str | Path) -> Path:
        """``config.json`` and ``model.safetensors`` in ``folder``, each written atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        atomic_write(folder / WEIGHTS_FILE, lambda temporary: save_file(tensors, temporary))
        write_json(folder / CONFIG_FILE, self.config.to_dict())
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> LearnedModel:
        """Load a folder written by :meth:`save_pretrained` (safetensors only; nothing is unpickled)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"learned model folder {folder} does not exist")
        config = LearnedModelConfig.from_dict(read_json(folder / CONFIG_FILE, "learned model config"))
        model = cls(config)
        state = load_safetensors(folder / WEIGHTS_FILE, "learned model weights")
        expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        found = {name: tuple(tensor.shape) for name, tensor in state.items()}
        if found != expected:
            wrong = sorted(name for name in expected.keys() | found.keys() if expected.get(name) != found.get(name))
            raise ValueError(
                f"learned model weights {folder / WEIGHTS_FILE} do not fit its config.json ({len(wrong)} "
                f"tensors missing, extra or of another shape, e.g. {wrong[:3]}); save the model again"
            )
        model.load_state_dict(state)
        return model.eval()


class LearnedMetric(QualityMetric):
    """A learned no-reference quality or aesthetics model trained by this project (``learned:<folder>``)."""

    name = "learned"
    differentiable = True

    def __init__(self, folder: str | Path, batch_size: int = 256):
        super().__init__()
        self.folder = str(folder)
        self.model = LearnedModel.from_pretrained(folder).requires_grad_(False)
        if self.model.config.task != "score":
            raise ValueError(
                f"{folder} holds a classifier ({', '.join(self.model.config.classes)}), not a quality metric"
            )
        self.higher_is_better = self.model.config.higher_is_better
        self.score_range = tuple(self.model.config.score_range)
        self.batch_size = batch_size
        self.train(False)

    def train(self, mode: bool = True) -> LearnedMetric:
        """The metric always evaluates (no dropout)."""
        super().train(mode)
        self.model.train(False)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = check_images(images, self.name).to(self.device)
        return torch.cat([self.model(chunk) for chunk in images.split(self.batch_size)])

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = check_images(images, self.name).to(self.device)
        parts = [self.model.features(chunk) for chunk in images.split(self.batch_size)]
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, folder={self.folder!r}, architecture={self.model.config.architecture}"


def prefixed_metric_info(argument: str) -> MetricInfo:
    """Registry description of ``learned:<folder>`` (reads the config only)."""
    config = LearnedModelConfig.from_dict(read_json(Path(argument) / CONFIG_FILE, "learned model config"))
    if config.task != "score":
        raise ValueError(f"{argument} holds a classifier ({', '.join(config.classes)}), not a quality metric")
    return MetricInfo(
        name=PREFIX + argument,
        higher_is_better=config.higher_is_better,
        score_range=tuple(config.score_range),
        differentiable=True,
        description=config.description or f"learned {config.architecture} model in {argument}",
        factory=lambda **options: LearnedMetric(argument, **options),
        backend="learned",
    )


def create_prefixed_metric(argument: str, **options) -> LearnedMetric:
    """The metric of ``learned:<folder>``; options go to :class:`LearnedMetric`."""
    return LearnedMetric(argument, **options)


# ---------------------------------------------------------------- training


def fit(
    model: LearnedModel,
    images: torch.Tensor,
    targets: torch.Tensor,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Train ``model`` in place on float images (N, 3, H, W) in [0, 1] and targets: scores (N,) for a score model
    (standardised by the config's ``score_mean``/``score_std``; MSE) or class indices (N,) for a classifier
    (cross-entropy). AdamW with a cosine schedule, random horizontal flips. Returns the mean loss per epoch."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    steps_per_epoch = max(1, len(images) // batch_size)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    classify = model.config.task == "classify"
    standardised = targets.long() if classify else (targets.float() - model.config.score_mean) / model.config.score_std
    model.train()
    losses = []
    for _ in tqdm(range(epochs), desc=f"fit {model.config.architecture}", unit="epoch", disable=not progress):
        order = torch.randperm(len(images), generator=generator)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * batch_size : (step + 1) * batch_size]
            pixels = images[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
            output = model.network.forward_features(pixels)["output"]
            loss = (
                F.cross_entropy(output, standardised[batch])
                if classify
                else F.mse_loss(output[:, 0], standardised[batch])
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach())
        losses.append(total_loss / steps_per_epoch)
    model.eval()
    return losses
