"""Does an image show what its caption asks for? A deterministic reading of single-object toy images.

:func:`read_object` finds the object in an image whose background is known (the prompt names it):

1. every pixel goes to the nearest of the 10 palette colours and the background's tones (RGB distance);
   pixels farther than :data:`MAX_COLOUR_DISTANCE` from all of them, and pixels of the background's tones,
   are left out;
2. the object is the largest 8-connected region of one palette colour, if it covers at least
   :data:`MIN_OBJECT_FRACTION` of the image: its colour is the object's colour;
3. its position is where the region's centroid lies: ``centre`` within :data:`CENTRE_RADIUS` of the middle
   (both axes), else the side of the larger offset;
4. its shape is the template (each shape drawn into the region's bounding box by the scene renderer) with
   the highest intersection over union with the region.

The background colour is read without knowing the prompt: every pixel goes to the nearest of the palette
colours and their second tones (a tone counts as its colour, so a striped blue background reads as blue),
and the background is the colour with the most pixels.

:func:`caption_following` reads generated images and compares colour, position and shape with their
prompts' scenes. Chance is measured, not assumed: the same readings compared with the attributes of the
other prompts (every reading against every other prompt's scene), which accounts for a model that always
draws the most common colour or position. Rendered 32 px scenes read back at 100 % for colour, position
and background and 94 % for shape (small stars can read as diamonds; 99 % at 48 px), so the reading is a
fair judge; degraded as the training data: colour 82 %, position 86 %, shape 67 %, background 91 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage

from .scenes import (
    COLOURS,
    SHAPES,
    Background,
    Scene,
    ToyObject,
    background_tones,
    object_coverage,
    rgb,
    second_tone,
    shape_mask,
)

MAX_COLOUR_DISTANCE = 90.0  # RGB distance beyond which a pixel belongs to no colour
MIN_OBJECT_FRACTION = 0.012  # smallest object region, fraction of the image area
CENTRE_RADIUS = 0.12  # centroid offset (fraction of the side) below which an object is "in the centre"
ATTRIBUTES = ("colour", "position", "shape", "background")


@dataclass(frozen=True)
class ObjectReading:
    """What :func:`read_object` found: the object's attributes are None when no region is large enough."""

    colour: str | None
    position: str | None
    shape: str | None
    area: float  # fraction of the image
    background: str


def _palette_masks(image: np.ndarray, background: Background) -> dict[str, np.ndarray]:
    """For each palette colour not used by the background, the pixels nearest to it."""
    tones = background_tones(background)
    names = list(COLOURS)
    candidates = np.stack([rgb(name) for name in names] + tones)  # (C, 3)
    distances = np.linalg.norm(image.astype(np.float64)[:, :, None, :] - candidates, axis=-1)  # (H, W, C)
    nearest = distances.argmin(axis=-1)
    close = distances.min(axis=-1) <= MAX_COLOUR_DISTANCE
    in_background = [any(np.linalg.norm(rgb(name) - tone) < 1 for tone in tones) for name in names]
    return {name: (nearest == k) & close for k, name in enumerate(names) if not in_background[k]}


def read_background(image: np.ndarray) -> str:
    """The colour (palette name) that covers most of the image, counting second tones as their colour."""
    names = list(COLOURS)
    candidates = np.stack([rgb(name) for name in names] + [second_tone(name) for name in names])
    distances = np.linalg.norm(image.astype(np.float64)[:, :, None, :] - candidates, axis=-1)
    counts = np.bincount(distances.argmin(axis=-1).ravel() % len(names), minlength=len(names))
    return names[int(counts.argmax())]


def _largest_region(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(sizes.argmax())


def position_of(x: float, y: float) -> str:
    """The position word for a centroid at ``(x, y)`` (fractions of the side)."""
    dx, dy = x - 0.5, y - 0.5
    if max(abs(dx), abs(dy)) < CENTRE_RADIUS:
        return "centre"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "bottom" if dy > 0 else "top"


@cache
def _template_box(shape: str) -> tuple[float, float, float, float]:
    """The bounding box (u0, u1, v0, v1) of a shape, in radii around its centre."""
    grid = np.linspace(-1.2, 1.2, 961)
    u, v = np.meshgrid(grid, grid, indexing="xy")
    inside = shape_mask(shape, u, v)
    return float(u[inside].min()), float(u[inside].max()), float(v[inside].min()), float(v[inside].max())


def _shape_of(region: np.ndarray) -> str:
    """The shape whose template, fitted to the region's bounding box, overlaps the region best."""
    size = region.shape[0]
    rows, columns = np.nonzero(region)
    left, right = columns.min() / size, (columns.max() + 1) / size
    top, bottom = rows.min() / size, (rows.max() + 1) / size
    scores = {}
    for shape in SHAPES:
        u0, u1, v0, v1 = _template_box(shape)
        radius = ((right - left) / (u1 - u0) + (bottom - top) / (v1 - v0)) / 2
        x, y = left - u0 * radius, top - v0 * radius
        coverage = object_coverage(ToyObject(shape, "white", "", "", x, y, radius), size)
        scores[shape] = np.minimum(coverage, region).sum() / np.maximum(coverage, region).sum()
    return max(scores, key=scores.get)


def read_object(image: np.ndarray, background: Background) -> ObjectReading:
    """Colour, position and shape of the object in a square (H, W, 3) uint8 image on ``background``, and
    the background colour read from the image alone."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"read_object: expected a square (H, W, 3) image, got shape {image.shape}")
    regions = {name: _largest_region(mask) for name, mask in _palette_masks(image, background).items()}
    colour = max(regions, key=lambda name: regions[name].sum())
    region = regions[colour]
    area = float(region.mean())
    if area < MIN_OBJECT_FRACTION:
        return ObjectReading(None, None, None, area, read_background(image))
    rows, columns = np.nonzero(region)
    size = image.shape[0]
    position = position_of((columns.mean() + 0.5) / size, (rows.mean() + 0.5) / size)
    return ObjectReading(colour, position, _shape_of(region), area, read_background(image))


def _wanted(scene: Scene, attribute: str) -> str:
    return scene.background.colour if attribute == "background" else getattr(scene.objects[0], attribute)


def caption_following(images: Sequence[np.ndarray], scenes: Sequence[Scene]) -> dict:
    """Agreement of images with the single-object scenes they were generated from, and measured chance.

    Attributes: the object's colour, position and shape, and the background colour. Returns
    ``{"images", "accuracy": {attribute: fraction}, "chance": {attribute: fraction},
    "uniform_chance": {attribute: 1/choices}, "found": fraction of images with an object}``.
    """
    if len(images) != len(scenes) or len(scenes) < 2:
        raise ValueError(
            f"caption_following: need as many scenes as images (at least 2), got {len(images)} images "
            f"and {len(scenes)} scenes"
        )
    if any(len(scene.objects) != 1 for scene in scenes):
        raise ValueError("caption_following: reads single-object scenes only")
    readings = [read_object(np.asarray(image), scene.background) for image, scene in zip(images, scenes)]
    accuracy, chance = {}, {}
    for attribute in ATTRIBUTES:
        read = np.array([getattr(reading, attribute) or "" for reading in readings], dtype=object)
        wanted = np.array([_wanted(scene, attribute) for scene in scenes], dtype=object)
        agree = read[:, None] == wanted[None, :]  # reading i against prompt j
        accuracy[attribute] = float(np.diag(agree).mean())
        chance[attribute] = float(agree[~np.eye(len(scenes), dtype=bool)].mean())
    choices = {"colour": len(COLOURS), "position": 5, "shape": len(SHAPES), "background": len(COLOURS)}
    return dict(
        images=len(images),
        accuracy=accuracy,
        chance=chance,
        uniform_chance={name: 1 / count for name, count in choices.items()},
        found=float(np.mean([reading.colour is not None for reading in readings])),
    )


class ToyCaptionScorer:
    """Prompt following on the toy world, its GenEval: for single-object scenes, whether the image shows the
    prompt's object colour, object position and background colour (shapes are left out: the toy base model
    draws blobs). A prompt's metadata names its scene: ``{"toy_scene": {"seed": S, "index": I}}``
    (:func:`~iqa_adapter.toy.scenes.scene_for` with ``kind="single", full_caption=True``). Plugs into the
    evaluation as its ``following_scorer``."""

    tasks = ("colour", "position", "background")

    def describe(self) -> dict:
        return {"scorer": "toy caption readers (iqa_adapter.toy.caption_check)", "tasks": list(self.tasks)}

    def score(self, images: Sequence, metadata: Sequence[dict]) -> list[list[dict]]:
        """Per image, one ``{"tag", "correct"}`` per task. Images: float tensors (3, H, W) in [0, 1] or arrays."""
        from .scenes import scene_for

        results = []
        for image, entry in zip(images, metadata):
            scene = scene_for(**entry["toy_scene"], kind="single", full_caption=True)
            array = np.asarray(image.permute(1, 2, 0).mul(255).round().byte() if hasattr(image, "permute") else image)
            reading = read_object(array, scene.background)
            results.append(
                [{"tag": task, "correct": getattr(reading, task) == _wanted(scene, task)} for task in self.tasks]
            )
        return results
