"""Procedural captioned scenes: the images of the toy world.

A scene is one or two flat-coloured objects on a background, or a small landscape (sky, ground or hills,
and a sun). Everything is drawn from a numpy ``Generator``, so :func:`scene_for` gives the same scene and
caption for the same ``(seed, index)`` on every machine, whatever the number of images written.

Vocabulary (all words of every caption, see :func:`caption_words`):

* 10 colours (:data:`COLOURS`), 7 shapes (:data:`SHAPES`), 2 sizes, 5 positions (left, right, top, bottom,
  centre), 5 background patterns (plain, gradient, striped, checked, dotted);
* single objects (55 % of scenes): ``"a large red circle on the left on a striped blue background"``; the
  size word and the position phrase are each left out of a quarter of the captions and ``plain`` of half
  of the plain backgrounds, so that short prompts (``"a red circle on a blue background"``) are in the
  training distribution, as in real captions that never describe everything;
* two objects (30 %), side by side or one above the other:
  ``"a small pink star on the left and a large white ring on the right on a dotted green background"``;
* landscapes (15 %): ``"a yellow sun on the right above green hills under a blue sky"``.

Object colours always differ clearly from the background's colours (RGB distance > 100), so that the
colour of an object is readable from the image (see :mod:`iqa_adapter.toy.caption_check`). Textures are
noise-free: stripes, checks and dots alternate the background colour with a lighter (or, for light colours,
darker) tone of it, and gradients run between the two.

Rendering draws every mask at 4x the output resolution and averages 4x4 blocks: sharp edges with light
anti-aliasing, so that blur, noise or JPEG artefacts are clearly a quality loss. Coordinates are fractions
of the image side (x to the right, y downwards), so a scene renders at any size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 215, 40),
    "green": (40, 160, 60),
    "cyan": (40, 200, 215),
    "blue": (40, 80, 215),
    "purple": (130, 60, 180),
    "pink": (245, 140, 195),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "ring", "cross")
SIZES = {"small": 0.14, "large": 0.22}  # object radius, as a fraction of the image side
POSITIONS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1), "centre": (0, 0)}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
PATTERNS = ("plain", "gradient", "striped", "checked", "dotted")
LANDSCAPE = "landscape"
SKY_COLOURS = ("blue", "cyan", "purple", "pink", "black")
GROUND_COLOURS = ("green", "yellow", "white", "purple")
SUN_COLOURS = ("yellow", "white", "orange", "red")
SCENE_KINDS = {"single": 0.70, "pair": 0.20, "landscape": 0.10}  # probabilities of the scene kinds

MIN_COLOUR_DISTANCE = 100.0  # RGB distance between an object's colour and every background tone
EDGE_MARGIN = 0.03  # gap between an object and the image border, fraction of the side
JITTER = 0.03  # random offset of object centres, fraction of the side
SUPERSAMPLING = 4


@dataclass(frozen=True)
class ToyObject:
    """A flat-coloured shape: centre ``(x, y)`` and ``radius`` are fractions of the image side."""

    shape: str
    colour: str
    size: str
    position: str
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class Background:
    """A background: ``pattern`` is one of :data:`PATTERNS` or ``"landscape"`` (then ``colour`` is the sky
    and ``ground`` the ground colour). ``angle`` orients gradients and stripes, ``period`` (fraction of the
    side) and ``phase`` place textures, ``horizon`` and ``hills`` shape landscapes."""

    pattern: str
    colour: str
    ground: str | None = None
    angle: float = 0.0
    period: float = 0.25
    phase: float = 0.0
    horizon: float = 0.65
    hills: bool = False


@dataclass(frozen=True)
class Scene:
    """Objects on a background, with the caption that describes them."""

    objects: tuple[ToyObject, ...]
    background: Background
    caption: str

    def to_dict(self) -> dict:
        """The attributes as plain JSON-ready values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """The inverse of :meth:`to_dict`."""
        return cls(
            tuple(ToyObject(**item) for item in data["objects"]), Background(**data["background"]), data["caption"]
        )


# ---------------------------------------------------------------- colours


def rgb(name: str) -> np.ndarray:
    """The colour ``name`` as a float RGB triple in [0, 255]."""
    if name not in COLOURS:
        raise ValueError(f"unknown colour {name!r}; choose from {', '.join(COLOURS)}")
    return np.array(COLOURS[name], dtype=np.float64)


def second_tone(name: str) -> np.ndarray:
    """The other tone of a textured background: lighter for dark colours, darker for light ones."""
    colour = rgb(name)
    luminance = float(colour @ np.array([0.299, 0.587, 0.114])) / 255
    target, amount = (np.full(3, 255.0), 0.45) if luminance < 0.55 else (np.zeros(3), 0.3)
    return colour + (target - colour) * amount


def background_tones(background: Background) -> list[np.ndarray]:
    """The RGB colours a background is painted with (a plain background has one)."""
    tones = [rgb(background.colour)]
    if background.pattern != "plain":
        tones.append(second_tone(background.colour))
    if background.pattern == LANDSCAPE:
        tones += [rgb(background.ground), second_tone(background.ground)]
    return tones


def _contrasts(colour: str, tones: list[np.ndarray]) -> bool:
    return all(np.linalg.norm(rgb(colour) - tone) > MIN_COLOUR_DISTANCE for tone in tones)


# ---------------------------------------------------------------- sampling


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _object(rng: np.random.Generator, tones: list[np.ndarray], position: str, taken: tuple[str, ...] = ()) -> ToyObject:
    colours = [name for name in COLOURS if name not in taken and _contrasts(name, tones)]
    size = _pick(rng, tuple(SIZES))
    radius = SIZES[size] * rng.uniform(0.9, 1.1)
    dx, dy = POSITIONS[position]
    reach = 0.5 - SIZES[size] - EDGE_MARGIN  # offset of a non-central object from the image centre
    x = 0.5 + dx * reach + rng.uniform(-JITTER, JITTER)
    y = 0.5 + dy * reach + rng.uniform(-JITTER, JITTER)
    return ToyObject(_pick(rng, SHAPES), _pick(rng, colours), size, position, float(x), float(y), float(radius))


def _pattern_background(rng: np.random.Generator) -> Background:
    return Background(
        pattern=_pick(rng, PATTERNS),
        colour=_pick(rng, tuple(COLOURS)),
        angle=float(_pick(rng, (0.0, 45.0, 90.0, 135.0))),
        period=float(rng.uniform(0.18, 0.26)),
        phase=float(rng.uniform(0, 1)),
    )


def _with_article(words: list[str]) -> str:
    """``"a red circle"``, ``"an orange circle"``."""
    return " ".join(["an" if words[0][0] in "aeiou" else "a"] + words)


def _object_phrase(item: ToyObject, with_size: bool, with_position: bool) -> str:
    words = ([item.size] if with_size else []) + [item.colour, item.shape]
    if with_position:
        words.append(POSITION_PHRASES[item.position])
    return _with_article(words)


def _background_phrase(background: Background, with_plain: bool) -> str:
    pattern = [background.pattern] if background.pattern != "plain" or with_plain else []
    return "on " + _with_article(pattern + [background.colour, "background"])


def sample_scene(rng: np.random.Generator, kind: str | None = None, full_caption: bool = False) -> Scene:
    """A random scene of ``kind`` (``"single"``, ``"pair"``, ``"landscape"``; None draws one with the
    probabilities of :data:`SCENE_KINDS`). ``full_caption`` keeps every optional word in the caption."""
    kinds = tuple(SCENE_KINDS)
    if kind is None:
        kind = kinds[int(rng.choice(len(kinds), p=list(SCENE_KINDS.values())))]
    if kind not in SCENE_KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; choose from {', '.join(kinds)}")
    if kind == LANDSCAPE:
        return _landscape(rng)
    background = _pattern_background(rng)
    tones = background_tones(background)
    with_plain = full_caption or rng.uniform() < 0.5
    if kind == "single":
        item = _object(rng, tones, _pick(rng, tuple(POSITIONS)))
        with_size = full_caption or rng.uniform() >= 0.25
        with_position = full_caption or rng.uniform() >= 0.25
        phrase = _object_phrase(item, with_size, with_position)
        return Scene((item,), background, f"{phrase} {_background_phrase(background, with_plain)}")
    first_position, second_position = _pick(rng, (("left", "right"), ("top", "bottom")))
    first = _object(rng, tones, first_position)
    second = _object(rng, tones, second_position, taken=(first.colour,))
    phrases = [_object_phrase(item, True, True) for item in (first, second)]
    return Scene(
        (first, second), background, f"{phrases[0]} and {phrases[1]} {_background_phrase(background, with_plain)}"
    )


def _landscape(rng: np.random.Generator) -> Scene:
    sky = _pick(rng, SKY_COLOURS)
    ground = _pick(rng, tuple(name for name in GROUND_COLOURS if name != sky))
    hills = bool(rng.uniform() < 0.5)
    background = Background(
        pattern=LANDSCAPE,
        colour=sky,
        ground=ground,
        phase=float(rng.uniform(0, 1)),
        horizon=float(rng.uniform(0.6, 0.7)),
        hills=hills,
    )
    tones = background_tones(background)
    colour = _pick(rng, tuple(name for name in SUN_COLOURS if _contrasts(name, tones)))
    position = _pick(rng, ("left", "right"))
    radius = 0.12 * rng.uniform(0.9, 1.1)
    x = 0.5 + POSITIONS[position][0] * 0.25 + rng.uniform(-JITTER, JITTER)
    sun = ToyObject("circle", colour, "small", position, float(x), float(rng.uniform(0.2, 0.3)), float(radius))
    caption = (
        f"{_with_article([colour, 'sun', POSITION_PHRASES[position]])} above {ground} "
        f"{'hills' if hills else 'ground'} under {_with_article([sky, 'sky'])}"
    )
    return Scene((sun,), background, caption)


def scene_for(seed: int, index: int, kind: str | None = None, full_caption: bool = False) -> Scene:
    """The scene number ``index`` of the toy world with ``seed``: the same on every call and machine."""
    return sample_scene(np.random.default_rng([seed, index]), kind, full_caption)


def caption_words() -> list[str]:
    """Every word that a caption can contain, in a fixed order (the toy tokenizer's vocabulary)."""
    grammar = (
        "a an and on the at in above under background sun ground hills sky " + " ".join(POSITION_PHRASES.values())
    ).split()
    words = grammar + list(COLOURS) + list(SHAPES) + list(SIZES) + list(PATTERNS)
    return list(dict.fromkeys(words))


# ---------------------------------------------------------------- rendering


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y coordinates (fractions of the side) of the centres of the supersampled pixels."""
    samples = size * SUPERSAMPLING
    centres = (np.arange(samples, dtype=np.float64) + 0.5) / samples
    return np.meshgrid(centres, centres, indexing="xy")


def _star(u: np.ndarray, v: np.ndarray, outer: float = 1.05, inner: float = 0.45) -> np.ndarray:
    """A five-pointed star pointing up: inside the triangle (centre, outer tip, inner corner) of its sector."""
    rho = np.hypot(u, v)
    angle = np.mod(np.arctan2(u, -v), 2 * np.pi / 5)
    angle = np.abs(angle - np.pi / 5) - np.pi / 5  # signed angle from the nearest tip, folded to [-36, 0] deg
    px, py = rho * np.cos(angle), np.abs(rho * np.sin(angle))
    ix, iy = inner * np.cos(np.pi / 5), inner * np.sin(np.pi / 5)
    # the point is inside when it lies on the centre's side of the edge from the tip (outer, 0) to the corner
    return (ix - outer) * py - iy * (px - outer) >= 0


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which points ``(u, v)`` (coordinates relative to the centre, in radii; v downwards) lie inside."""
    if shape == "circle":
        return u * u + v * v <= 1
    if shape == "square":
        return (np.abs(u) <= 0.82) & (np.abs(v) <= 0.82)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.05
    if shape == "triangle":
        return (v <= 0.75) & (np.abs(u) <= (v + 0.95) / 1.7)
    if shape == "star":
        return _star(u, v)
    if shape == "ring":
        return (u * u + v * v <= 1) & (u * u + v * v >= 0.55**2)
    if shape == "cross":
        return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1))
    raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def _downsample(values: np.ndarray, size: int) -> np.ndarray:
    """Average SUPERSAMPLING x SUPERSAMPLING blocks: (S*size, S*size, ...) -> (size, size, ...)."""
    s = SUPERSAMPLING
    return values.reshape(size, s, size, s, *values.shape[2:]).mean(axis=(1, 3))


def object_coverage(item: ToyObject, size: int) -> np.ndarray:
    """The fraction of each pixel of a ``size`` x ``size`` image that the object covers, (size, size)."""
    x, y = _grid(size)
    inside = shape_mask(item.shape, (x - item.x) / item.radius, (y - item.y) / item.radius)
    return _downsample(inside.astype(np.float64), size)


def _background_pixels(background: Background, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Supersampled background colours, (S*size, S*size, 3) in [0, 255]."""
    first, second = rgb(background.colour), second_tone(background.colour)
    theta = math.radians(background.angle)
    along = x * math.cos(theta) + y * math.sin(theta)  # coordinate across stripes / along gradients
    if background.pattern == "plain":
        mix = np.zeros_like(x)
    elif background.pattern == "gradient":
        mix = (along - along.min()) / (along.max() - along.min())
    elif background.pattern == "striped":
        mix = (np.floor(along / (background.period / 2) + background.phase) % 2).astype(np.float64)
    elif background.pattern == "checked":
        half = background.period / 2
        mix = ((np.floor(x / half + background.phase) + np.floor(y / half + background.phase)) % 2).astype(np.float64)
    elif background.pattern == "dotted":
        cell_x = np.mod(x / background.period + background.phase, 1) - 0.5
        cell_y = np.mod(y / background.period + background.phase, 1) - 0.5
        mix = (np.hypot(cell_x, cell_y) <= 0.22).astype(np.float64)
    elif background.pattern == LANDSCAPE:
        return _landscape_pixels(background, x, y)
    else:
        raise ValueError(
            f"unknown background pattern {background.pattern!r}; choose from {', '.join(PATTERNS + (LANDSCAPE,))}"
        )
    return first + (second - first) * mix[..., None]


def _landscape_pixels(background: Background, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    sky, haze = rgb(background.colour), second_tone(background.colour)
    horizon = background.horizon + (0.06 * np.sin(2 * np.pi * (1.5 * x + background.phase)) if background.hills else 0)
    sky_pixels = sky + (haze - sky) * np.clip(y / background.horizon, 0, 1)[..., None] ** 2
    ground, shade = rgb(background.ground), second_tone(background.ground)
    ground_pixels = ground + (shade - ground) * np.clip((y - horizon) / (1 - horizon), 0, 1)[..., None]
    return np.where((y >= horizon)[..., None], ground_pixels, sky_pixels)


def render_scene(scene: Scene, size: int = 32) -> np.ndarray:
    """The scene as a (size, size, 3) uint8 RGB image."""
    if size < 8:
        raise ValueError(f"render_scene: size must be at least 8 pixels, got {size}")
    x, y = _grid(size)
    pixels = _downsample(_background_pixels(scene.background, x, y), size)
    for item in scene.objects:
        coverage = object_coverage(item, size)[..., None]
        pixels = pixels * (1 - coverage) + rgb(item.colour) * coverage
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def render_scenes(scenes: Iterable[Scene], size: int = 32) -> torch.Tensor:
    """The scenes rendered as float (N, 3, size, size) in [0, 1] (exactly the 8-bit rendering)."""
    pixels = np.stack([render_scene(scene, size) for scene in scenes])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
