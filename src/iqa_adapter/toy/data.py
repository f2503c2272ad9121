"""The toy dataset: rendered scenes, degraded at random, written in the formats our readers take.

:func:`write_toy_dataset` renders scene ``i`` of :func:`~iqa_adapter.toy.scenes.scene_for` and, unless it
is drawn clean, degrades it with one KADID-like family of :mod:`iqa_adapter.distortions` at a level
uniform in [0, 1]. Image ``i`` depends only on ``(seed, i)``: a larger dataset with the same seed starts
with the same images. The training set therefore has a wide quality distribution, as CC3M does, with a
known cause for every bad image.

Each sample is a lossless PNG (JPEG artefacts are baked in by the degradation itself), its caption and a
JSON record ``{key, caption, seed, index, size, scene, distortion: {family, level}}``:

* ``format="folder"``: ``KEY.png``, ``KEY.txt``, ``KEY.json`` in ``out_dir``;
* ``format="shards"``: img2dataset-style webdataset shards ``00000.tar``, ... holding the same three
  members per sample, ``shard_size`` samples per shard.

Both also get ``metadata.parquet`` (key, caption, kind, family ("" when clean), level: one row per image,
for evaluations; keys stay strings, as in ``annotate``'s ``scores.parquet``)
and, written last as the mark of a finished dataset, ``toy_dataset.json`` with the parameters. Calling
again with the same parameters finds that file and returns at once; other parameters on a finished
directory are refused. Keys are the image index on 9 digits (``000000042``), in both formats.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..datasets import load_image, open_dataset
from ..distortions import FAMILIES, random_distortions
from ..images import to_uint8_arrays
from ..io_utils import atomic_write, write_json
from .scenes import LANDSCAPE, Scene, render_scene, scene_for

MANIFEST = "toy_dataset.json"
METADATA = "metadata.parquet"
FORMATS = ("folder", "shards")
TRAINING_CLEAN_FRACTION = 0.5  # default fraction of undegraded images
_DISTORTION_STREAM = 1  # the distortion of image i draws from SeedSequence([seed, i, 1]), its scene from [seed, i]


def scene_kind(scene: Scene) -> str:
    """``"single"``, ``"pair"`` or ``"landscape"``."""
    if scene.background.pattern == LANDSCAPE:
        return LANDSCAPE
    return "single" if len(scene.objects) == 1 else "pair"


def toy_sample(
    seed: int, index: int, size: int, distort: bool, clean_fraction: float, families: tuple[str, ...] = FAMILIES
) -> tuple[np.ndarray, dict]:
    """Image ``index`` of the toy dataset with ``seed``: (size, size, 3) uint8 pixels and its JSON record."""
    scene = scene_for(seed, index)
    pixels = render_scene(scene, size)
    family, level = None, 0.0
    if distort:
        state = np.random.SeedSequence([seed, index, _DISTORTION_STREAM]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(state))
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
        degraded, names, levels = random_distortions(image, generator, families, clean_fraction)
        family, level = names[0], float(levels[0])
        pixels = to_uint8_arrays(degraded)[0]
    key = f"{index:09d}"
    record = dict(
        key=key,
        caption=scene.caption,
        seed=seed,
        index=index,
        size=size,
        kind=scene_kind(scene),
        scene=scene.to_dict(),
        distortion=dict(family=family, level=level),
    )
    return pixels, record


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _members(pixels: np.ndarray, record: dict) -> dict[str, bytes]:
    """The files of one sample: ``KEY.png``, ``KEY.txt``, ``KEY.json``."""
    key = record["key"]
    return {
        f"{key}.png": _png(pixels),
        f"{key}.txt": record["caption"].encode(),
        f"{key}.json": json.dumps(record).encode(),
    }


def _write_tar(path: Path, files: dict[str, bytes]) -> None:
    def write(temporary: str) -> None:
        with tarfile.open(temporary, "w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))

    atomic_write(path, write)


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch on one thread: the per-image ops on tiny tensors gain nothing from more, and on a busy
    machine waiting for the other threads of each op made writing the dataset six times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def write_toy_dataset(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    size: int = 32,
    distort: bool = True,
    clean_fraction: float = TRAINING_CLEAN_FRACTION,
    format: str = "folder",
    shard_size: int = 1000,
    families: tuple[str, ...] = FAMILIES,
    progress: bool = True,
) -> Path:
    """Render ``num_images`` captioned toy images into ``out_dir`` (see the module docstring); returns it.

    ``distort=False`` keeps every image clean; otherwise a fraction ``clean_fraction`` of the images (in
    expectation) stays clean and the others get one family of ``families`` at a random level.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; choose from {', '.join(FORMATS)}")
    if num_images < 1 or shard_size < 1:
        raise ValueError(f"num_images and shard_size must be positive, got {num_images} and {shard_size}")
    out_dir = Path(out_dir)
    parameters = dict(
        num_images=num_images,
        seed=seed,
        size=size,
        distort=distort,
        clean_fraction=clean_fraction,
        format=format,
        shard_size=shard_size if format == "shards" else None,
        families=list(families),
    )
    manifest = out_dir / MANIFEST
    if manifest.exists():
        found = json.loads(manifest.read_text())["parameters"]
        if found == parameters:
            return out_dir
        raise ValueError(
            f"{out_dir} already holds a toy dataset made with other parameters ({found}); "
            "give another directory or delete it"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows, shard_files = [], {}
    for index in tqdm(range(num_images), desc="toy dataset", unit="img", disable=not progress):
        with _single_thread():
            pixels, record = toy_sample(seed, index, size, distort, clean_fraction, tuple(families))
        files = _members(pixels, record)
        rows.append(
            dict(
                key=record["key"],
                caption=record["caption"],
                kind=record["kind"],
                family=record["distortion"]["family"] or "",
                level=record["distortion"]["level"],
            )
        )
        if format == "folder":
            for name, data in files.items():
                (out_dir / name).write_bytes(data)
            continue
        shard_files.update(files)
        if (index + 1) % shard_size == 0 or index + 1 == num_images:
            _write_tar(out_dir / f"{index // shard_size:05d}.tar", shard_files)
            shard_files = {}
    table = pd.DataFrame(rows)
    atomic_write(out_dir / METADATA, lambda temporary: table.to_parquet(temporary, index=False))
    families_count = Counter(row["family"] or "clean" for row in rows)
    write_json(
        manifest,
        dict(
            parameters=parameters,
            families=dict(sorted(families_count.items())),
            seconds=round(time.perf_counter() - started, 1),
        ),
    )
    return out_dir


def load_images(data: str | Path, size: int | None = None, progress: bool = True) -> tuple[torch.Tensor, list[str]]:
    """Every image of a dataset that :func:`~iqa_adapter.datasets.open_dataset` reads, as a uint8 tensor
    (N, 3, size, size), and the captions. Entries without a readable image are refused with their reason."""
    images, captions = [], []
    samples = list(open_dataset(str(data)))
    for sample in tqdm(samples, desc="reading images", unit="img", disable=not progress):
        decoded = load_image(sample, size)
        if decoded.image is None:
            raise ValueError(f"{sample.source}: {decoded.reason}")
        image = decoded.image
        images.append(image if image.dtype == torch.uint8 else image.mul(255).round().to(torch.uint8))
        captions.append(sample.caption)
    if not images:
        raise ValueError(f"{data}: no images found")
    if len({tuple(image.shape) for image in images}) > 1:
        raise ValueError(f"{data}: images of different sizes; give a size to resize them to")
    return torch.stack(images), captions
