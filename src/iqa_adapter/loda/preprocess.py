"""Image pre-processing before the crops: the resize of the official LoDa data scripts, and dataset presets.

The official code resizes the images of most datasets offline, once, and trains and tests on the resized
files (``scripts/process_*.py``, read back by ``src/dataset/*_dataset.py``): torchvision's ``Resize(384)`` on
PIL images, which scales the shorter side to 384 and the longer one to ``int(384 * long / short)``
(600x400 -> 576x384), antialiased. :class:`Resize` does the same on tensors, so that the ``loda:<dir>``
metric applies it to images in memory and stays differentiable: a horizontal then a vertical antialiased
pass, each clipped to [0, 1] as PIL's 8-bit passes are, which matches PIL to about 1/255 (PIL also rounds
the result to 8 bits; we keep floats).

:data:`DATASET_PRESETS` holds, per dataset of the paper, the resize that the official dataset class reads
and the official training crops per image (``config/job/train_loda_<name>.yaml``, ``train.patch_num``);
every dataset is tested on 15 crops per image there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..io_utils import reject_unknown_fields

INTERPOLATIONS = ("bicubic", "bilinear")


class PreprocessError(ValueError):
    """A pre-processing setting that cannot be used; the message names the problem and the fix."""


@dataclass(frozen=True)
class Resize:
    """Resize images before cropping: the shorter side to ``short_side`` (aspect kept, as torchvision's
    ``Resize(int)``), or to exactly ``size`` = (width, height); ``interpolation`` is bicubic or bilinear."""

    short_side: int | None = None
    size: tuple[int, int] | None = None
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", tuple(self.size))  # JSON gives a list
        if (self.short_side is None) == (self.size is None):
            raise PreprocessError("a resize needs either a shorter side (--resize-short N) or a size (--resize WxH)")
        sides = (self.short_side,) if self.size is None else self.size
        valid = all(isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in sides)
        if not valid or len(sides) != (1 if self.size is None else 2):
            raise PreprocessError(
                f"resize sides must be integers >= 1, got {sides[0] if self.size is None else self.size!r}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise PreprocessError(f"unknown interpolation {self.interpolation!r}; choose {' or '.join(INTERPOLATIONS)}")

    @property
    def smallest_side(self) -> int:
        """The shorter side of every resized image."""
        return self.short_side if self.size is None else min(self.size)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of a resized (height, width) image."""
        if self.size is not None:
            return self.size[1], self.size[0]
        if height <= width:
            return self.short_side, int(self.short_side * width / height)
        return int(self.short_side * height / width), self.short_side

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Resized (3, H, W) or (N, 3, H, W) images in [0, 1] (the same tensor when the size is unchanged)."""
        height, width = images.shape[-2:]
        new_height, new_width = self.output_size(height, width)
        if (new_height, new_width) == (height, width):
            return images
        batch = images if images.ndim == 4 else images[None]
        for target in ((height, new_width), (new_height, new_width)):  # horizontal, then vertical, as PIL
            if tuple(batch.shape[-2:]) != target:
                batch = F.interpolate(
                    batch, size=target, mode=self.interpolation, antialias=True, align_corners=False
                ).clamp(0, 1)
        return batch if images.ndim == 4 else batch[0]

    def describe(self) -> str:
        """E.g. ``shorter side to 384 px (bicubic)``."""
        target = f"shorter side to {self.short_side} px" if self.size is None else f"{self.size[0]}x{self.size[1]} px"
        return f"{target} ({self.interpolation})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Resize:
        reject_unknown_fields(cls, data, "resize setting", hint=" (the checkpoint may come from a newer version)")
        return cls(**data)


@dataclass(frozen=True)
class DatasetPreset:
    """The official pre-processing of one dataset: its resize (None: native size) and training crops."""

    resize: Resize | None
    crops_per_image: int


OFFICIAL_SHORT_SIDE = 384
DATASET_PRESETS = {
    "live": DatasetPreset(Resize(short_side=OFFICIAL_SHORT_SIDE, interpolation="bicubic"), 5),
    # the official class reads distorted_images/ (512x384), not the resized copy its script writes
    "tid2013": DatasetPreset(None, 10),
    "kadid10k": DatasetPreset(Resize(short_side=OFFICIAL_SHORT_SIDE, interpolation="bicubic"), 3),
    # the official class reads Images/ (500x500), not the resized copy its script writes
    "livec": DatasetPreset(None, 5),
    # torchvision's default (bilinear) interpolation: 1024x768 -> 512x384
    "koniq10k": DatasetPreset(Resize(short_side=OFFICIAL_SHORT_SIDE, interpolation="bilinear"), 3),
    "spaq": DatasetPreset(Resize(short_side=OFFICIAL_SHORT_SIDE, interpolation="bilinear"), 3),
    "flive": DatasetPreset(Resize(short_side=OFFICIAL_SHORT_SIDE, interpolation="bicubic"), 1),
}


def dataset_preset(name: str) -> DatasetPreset:
    """The official pre-processing of dataset ``name`` (see :data:`DATASET_PRESETS`)."""
    if name not in DATASET_PRESETS:
        raise PreprocessError(
            f"no official pre-processing for dataset {name!r}; choose one of "
            f"{', '.join(DATASET_PRESETS)}, or set --resize-short / --resize and --crops-per-image"
        )
    return DATASET_PRESETS[name]


def describe_preprocessing(
    resize: Resize | None, crop_size: int, crops_per_image: int, preset: str | None = None
) -> str:
    """One line for logs and reports: the resize, the training crops and, with ``preset``, whose settings
    they are (and whether they are still the official ones)."""
    text = (
        f"{resize.describe() if resize is not None else 'native size'}, then {crops_per_image} random "
        f"{crop_size} px training crops per image"
    )
    if preset is None:
        return text
    official = DATASET_PRESETS[preset]
    if (official.resize, official.crops_per_image) == (resize, crops_per_image):
        return f"{text} (the official {preset} pre-processing)"
    return (
        f"{text} (changed from the official {preset} pre-processing: "
        f"{describe_preprocessing(official.resize, crop_size, official.crops_per_image)})"
    )
