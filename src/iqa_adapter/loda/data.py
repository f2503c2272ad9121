"""No-reference IQA datasets in pyiqa's convention, their splits, and the crops LoDa trains and tests on.

A dataset is a meta CSV with one row per image: the image path (relative to ``root``, by default the CSV's
folder) and its mean opinion score, optionally the reference (pristine) image it was made from, and split
columns whose values are ``train`` / ``val`` / ``test``. Column names are detected (see the ``*_COLUMNS``
tuples, case-insensitive) or given explicitly.

Splits are lists of row indices ``{"train": [...], "val": [...], "test": [...]}``: from a split column, from
a JSON file ``{"0": {"train": [...], ...}, "1": ...}`` (or a list of such dicts), from pyiqa's split
pickle (read only with ``trust_pickle=True``: unpickling runs code from the file, so only trusted files), or
drawn by :func:`random_splits` (80/20, by reference image when references are known, as the paper does
for LIVE, TID2013 and KADID-10k).

Crops: training takes random ``crop`` x ``crop`` crops (several per image and epoch) with random
horizontal and vertical flips; testing averages the scores of several random or uniformly placed crops
(:func:`crop_positions`). Before cropping, images get the model's pre-processing (:func:`prepare_images`):
its resize, if any (:class:`~iqa_adapter.loda.preprocess.Resize`, e.g. the shorter side to 384 as the
official data scripts), then images whose shorter side is below the crop size are upscaled (bilinear,
aspect kept) so that the shorter side equals it. Crop randomness comes from ``numpy`` seed sequences of
(seed, epoch, item), so it is the same for any number of workers and after a resume.

Unreadable images: :func:`drop_unreadable` decodes every image a run will use once, before it starts, and
drops the rows of missing or corrupt ones from its splits (listing them in ``skipped.csv``), so one bad file
is reported up front instead of failing a data-loading worker mid-training. It is deterministic, so a
resumed run drops the same rows.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import pickle
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..images import ImageReadError, open_image, rgb_tensor
from .preprocess import Resize

IMAGE_COLUMNS = (
    "img_name",
    "image_name",
    "dist_name",
    "dis_img_path",
    "dist_img",
    "img_path",
    "image",
    "path",
    "file_name",
    "filename",
)
MOS_COLUMNS = ("mos", "dmos", "mos_z", "mos_zscore", "score")
REF_COLUMNS = ("ref_name", "ref_img", "ref_img_name", "ref_img_path", "reference", "ref")
SPLIT_PARTS = ("train", "val", "test")
PART_NAMES = {"train": "training", "val": "validation", "test": "test"}
CROP_MODES = ("random", "uniform")
SKIPPED_FILE = "skipped.csv"
SHOWN_SKIPPED = 3  # unreadable images named in the log line when there is no skipped.csv to list them
logger = logging.getLogger("iqa_adapter.loda")

Split = dict[str, list[int]]


class IQADataError(ValueError):
    """A dataset, split or crop setting that cannot be used; the message names the problem and the fix."""


# ---------------------------------------------------------------- meta CSV and splits


@dataclass
class IQATable:
    """The rows of a meta CSV: image paths, scores (higher = better) and optional reference names."""

    paths: list[Path]
    mos: np.ndarray
    refs: list[str] | None
    frame: pd.DataFrame
    source: Path

    def __len__(self) -> int:
        return len(self.paths)


def _find_column(
    frame: pd.DataFrame, given: str | None, candidates: tuple[str, ...], what: str, required: bool = True
) -> str | None:
    if given is not None:
        if given not in frame.columns:
            raise IQADataError(f"column {given!r} ({what}) is not in the meta CSV; it has {list(frame.columns)}")
        return given
    lower = {column.lower(): column for column in frame.columns}
    for candidate in candidates:
        if candidate in lower:
            return lower[candidate]
    if required:
        raise IQADataError(
            f"no {what} column in the meta CSV (looked for {', '.join(candidates)}; it has "
            f"{list(frame.columns)}); name it explicitly"
        )
    return None


def read_meta(
    csv_path: str | Path,
    root: str | Path | None = None,
    image_column: str | None = None,
    mos_column: str | None = None,
    ref_column: str | None = None,
    lower_is_better: bool = False,
) -> IQATable:
    """Read a meta CSV; ``lower_is_better`` negates the scores of DMOS-style labels."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        state = "is a folder" if csv_path.is_dir() else "does not exist"
        raise IQADataError(f"meta CSV {csv_path} {state}; give the CSV file that lists the images and their MOS")
    try:
        frame = pd.read_csv(csv_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        detail = " ".join(str(error).split())  # pandas' messages can span lines
        raise IQADataError(
            f"meta CSV {csv_path} cannot be read as CSV ({detail}); give a text CSV with a header row "
            "and one row per image"
        ) from None
    if frame.empty:
        raise IQADataError(f"meta CSV {csv_path} has no rows; give a CSV with one row per image")
    image = _find_column(frame, image_column, IMAGE_COLUMNS, "image path")
    mos = _find_column(frame, mos_column, MOS_COLUMNS, "score (MOS)")
    ref = _find_column(frame, ref_column, REF_COLUMNS, "reference image", required=False)
    root = Path(root) if root is not None else csv_path.parent
    scores = pd.to_numeric(frame[mos], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(scores).any():
        raise IQADataError(f"column {mos!r} of {csv_path} has {int(np.isnan(scores).sum())} non-numeric scores")
    return IQATable(
        paths=[root / str(name) for name in frame[image]],
        mos=-scores if lower_is_better else scores,
        refs=[str(name) for name in frame[ref]] if ref is not None else None,
        frame=frame,
        source=csv_path,
    )


def split_from_column(table: IQATable, column: str) -> Split:
    """The split a column of ``train`` / ``val`` / ``test`` values gives (other values are left out)."""
    if column not in table.frame.columns:
        raise IQADataError(f"split column {column!r} is not in {table.source}; it has {list(table.frame.columns)}")
    values = table.frame[column].astype(str).str.strip().str.lower().to_numpy()
    return {part: np.flatnonzero(values == part).tolist() for part in SPLIT_PARTS}


def read_split_file(path: str | Path, trust_pickle: bool = False, rows: int | None = None) -> list[Split]:
    """The splits of a JSON split file, or of pyiqa's split pickle when ``trust_pickle`` is set; with ``rows``
    (the meta CSV's row count), every index must be one of its rows."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".pkl", ".pickle"):
        raise IQADataError(f"split file {path} must be .json (or a pyiqa .pkl with --trust-pickle)")
    if suffix != ".json" and not trust_pickle:
        raise IQADataError(
            f"{path} is a pickle, and unpickling runs code from the file; pass --trust-pickle "
            "(trust_pickle=True) only for files you trust, or convert it to JSON"
        )
    if not path.is_file():
        raise IQADataError(f"split file {path} does not exist; check --split-file")
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise IQADataError(f"split file {path} is not valid JSON ({error}); fix or regenerate it") from None
    else:
        try:
            with open(path, "rb") as handle:
                data = pickle.load(handle)
        except Exception as error:  # unpickling damaged data can raise almost anything
            raise IQADataError(
                f"split file {path} cannot be unpickled ({type(error).__name__}: {error}); fix or regenerate it"
            ) from None
    shape = (
        f'{path}: expected splits {{"0": {{"train": [...], "val": [...], "test": [...]}}, ...}} '
        "(or a list of such dicts) with integer keys and row indices"
    )
    try:
        entries = [data[key] for key in sorted(data, key=lambda k: int(k))] if isinstance(data, dict) else list(data)
        splits = [
            {part: [int(i) for i in entry.get(part) or []] for part in SPLIT_PARTS}
            for entry in entries
            if isinstance(entry, dict) and "train" in entry
        ]
    except (TypeError, ValueError):
        raise IQADataError(shape) from None
    if len(splits) != len(entries) or not splits:
        raise IQADataError(shape)
    if rows is not None:
        for k, split in enumerate(splits):
            outside = [i for part in SPLIT_PARTS for i in split[part] if not 0 <= i < rows]
            if outside:
                raise IQADataError(
                    f"{path}: split {k} has row index {outside[0]}, outside the meta CSV's {rows} rows "
                    f"(0 to {rows - 1}); the split file does not fit this meta CSV"
                )
    return splits


def check_train_fraction(name: str, value) -> float:
    """``value`` as the train share of random splits: a number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < 1:
        raise IQADataError(f"{name} must be a number > 0 and < 1, got {value!r}")
    return float(value)


def random_splits(
    count: int, refs: list[str] | None = None, num_splits: int = 10, train_fraction: float = 0.8, seed: int = 0
) -> list[Split]:
    """``num_splits`` random train/test splits of ``count`` rows; with ``refs`` whole reference groups go
    to one side, so no reference image is in both."""
    check_train_fraction("train_fraction", train_fraction)
    groups = refs if refs is not None else [str(i) for i in range(count)]
    if len(groups) != count:
        raise IQADataError(f"{len(groups)} reference names for {count} rows")
    names = sorted(set(groups))
    if len(names) < 2:
        raise IQADataError("a split needs at least two images (or two reference images)")
    splits = []
    for k in range(num_splits):
        order = np.random.default_rng(np.random.SeedSequence((seed, k))).permutation(len(names))
        cut = min(len(names) - 1, max(1, round(train_fraction * len(names))))
        train_names = {names[i] for i in order[:cut]}
        train = [i for i, g in enumerate(groups) if g in train_names]
        splits.append({"train": train, "val": [], "test": [i for i, g in enumerate(groups) if g not in train_names]})
    return splits


# ---------------------------------------------------------------- images and crops


def load_image(path: Path) -> torch.Tensor:
    """An image file as float32 (3, H, W) in [0, 1] (16-bit grey images at full precision, not clipped).

    Raises :class:`~iqa_adapter.images.ImageReadError` (a ValueError) naming the file and the problem."""
    if not Path(path).exists():
        raise ImageReadError(
            f"image {path} listed in the meta CSV does not exist; check --root (the folder the "
            "image paths are relative to; default: the meta CSV's folder)"
        )
    return rgb_tensor(open_image(path))


def _read_problem(path: Path) -> str | None:
    """Why the image file cannot be read, or None when it decodes."""
    try:
        open_image(path, name="image")
    except ImageReadError as error:
        return str(error)
    return None


def unreadable_images(paths: Iterable[Path]) -> dict[Path, str]:
    """The image files that cannot be read, each with the reason: every file is decoded once, in threads
    (PIL decodes without holding the GIL)."""
    paths = sorted(set(paths))
    with ThreadPoolExecutor() as pool:
        problems = pool.map(_read_problem, paths)
    return {path: problem for path, problem in zip(paths, problems) if problem is not None}


def drop_unreadable(
    table: IQATable, splits: list[Split], out_dir: str | Path | None = None, test_table: IQATable | None = None
) -> list[Split]:
    """``splits`` without the rows whose image cannot be read (missing, empty, truncated, not an image).

    Only the rows in ``splits`` are checked, each image decoded once; the test parts index ``test_table``
    when given (cross-dataset), the other parts ``table``. Unreadable images are logged in one line and,
    with ``out_dir``, listed (path, reason) in ``out_dir/skipped.csv`` (written only when there are some).
    Raises :class:`IQADataError` when a part that had rows has no readable image left."""

    def rows_table(part: str) -> IQATable:
        return test_table if part == "test" and test_table is not None else table

    used = {rows_table(part).paths[row] for split in splits for part, rows in split.items() for row in rows}
    problems = unreadable_images(used)
    kept = [
        {part: [row for row in rows if rows_table(part).paths[row] not in problems] for part, rows in split.items()}
        for split in splits
    ]
    if not problems:
        return kept
    listing = Path(out_dir) / SKIPPED_FILE if out_dir is not None else None
    entries = [f"{path}: {why}" for path, why in problems.items()]
    listed = (
        f"listed in {listing}"
        if listing is not None
        else "; ".join(entries[:SHOWN_SKIPPED]) + ("; ..." if len(entries) > SHOWN_SKIPPED else "")
    )
    if listing is not None:
        listing.parent.mkdir(parents=True, exist_ok=True)
        with open(listing, "w", newline="") as handle:
            csv.writer(handle).writerows([("path", "reason"), *((str(p), why) for p, why in problems.items())])
    for k, (split, left) in enumerate(zip(splits, kept)):
        for part, rows in split.items():
            if rows and not left[part]:
                which = f"split {k}: " if len(splits) > 1 else ""
                example = f"e.g. {entries[0]}; {listed}" if listing is not None else listed
                raise IQADataError(
                    f"{which}none of the {len(rows)} {PART_NAMES.get(part, part)} images can be read "
                    f"({len(problems)} unreadable: {example}); fix or replace the files, or check "
                    "--root"
                )
    logger.warning("skipped %d of %d images that cannot be read; %s", len(problems), len(used), listed)
    return kept


def fit_min_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Upscale (N, 3, H, W) or (3, H, W) images whose shorter side is below ``size`` so that it equals it."""
    height, width = images.shape[-2:]
    if min(height, width) >= size:
        return images
    scale = size / min(height, width)
    target = (max(size, math.ceil(height * scale - 1e-6)), max(size, math.ceil(width * scale - 1e-6)))
    batch = images if images.ndim == 4 else images[None]
    resized = F.interpolate(batch, size=target, mode="bilinear", align_corners=False).clamp(0, 1)
    return resized if images.ndim == 4 else resized[0]


def prepare_images(images: torch.Tensor, crop: int, resize: Resize | None = None) -> torch.Tensor:
    """(N, 3, H, W) or (3, H, W) images as they are cropped: resized by ``resize`` (None: native size), then
    upscaled to at least ``crop`` on the shorter side (:func:`fit_min_size`)."""
    return fit_min_size(resize(images) if resize is not None else images, crop)


def _balanced_grid(count: int) -> tuple[int, int]:
    """``rows * cols == count`` with rows <= cols as close as possible (15 -> 3 x 5)."""
    rows = max(r for r in range(1, math.isqrt(count) + 1) if count % r == 0)
    return rows, count // rows


def crop_positions(
    height: int, width: int, size: int, count: int, mode: str, rng: np.random.Generator | None = None
) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` crops of ``size`` in an image at least ``size`` on each side.

    ``random``: uniform positions from ``rng``. ``uniform``: a deterministic grid of rows x cols = count
    evenly spaced positions from corner to corner, the larger count along the longer side.
    """
    if mode not in CROP_MODES:
        raise IQADataError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    if count < 1:
        raise IQADataError(f"the number of crops must be at least 1, got {count}")
    if mode == "random":
        if rng is None:
            raise IQADataError("random crops need a numpy Generator")
        return [(int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))) for _ in range(count)]
    few, many = _balanced_grid(count)
    rows, cols = (many, few) if height > width else (few, many)
    tops = np.linspace(0, height - size, rows).round().astype(int)
    lefts = np.linspace(0, width - size, cols).round().astype(int)
    return [(int(top), int(left)) for top in tops for left in lefts]


def take_crops(images: torch.Tensor, size: int, positions: list[tuple[int, int]]) -> torch.Tensor:
    """Crops (N, k, 3, size, size) at the same positions of every image in (N, 3, H, W)."""
    return torch.stack([images[..., top : top + size, left : left + size] for top, left in positions], dim=1)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(keys))


class TrainCrops(Dataset):
    """``crops_per_image`` random crops with random flips per image and epoch, after ``resize``; item ``i``
    is a crop of image ``indices[i // crops_per_image]``. Call :meth:`set_epoch` before each epoch."""

    def __init__(
        self,
        table: IQATable,
        indices: list[int],
        crop: int,
        crops_per_image: int,
        seed: int,
        resize: Resize | None = None,
    ):
        if not indices:
            raise IQADataError("the training split is empty")
        self.table, self.indices, self.crop, self.resize = table, list(indices), crop, resize
        self.crops_per_image, self.seed, self.epoch = crops_per_image, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices) * self.crops_per_image

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.indices[item // self.crops_per_image]
        image = prepare_images(load_image(self.table.paths[row]), self.crop, self.resize)
        rng = _rng(self.seed, self.epoch, item)
        ((top, left),) = crop_positions(*image.shape[-2:], self.crop, 1, "random", rng)
        crop = image[:, top : top + self.crop, left : left + self.crop]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        if rng.random() < 0.5:
            crop = crop.flip(-2)
        return crop.contiguous(), torch.tensor(self.table.mos[row], dtype=torch.float32)


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled full batches of one epoch (the last incomplete batch is dropped, as in the official
    code: the PLCC loss needs at least two samples)."""
    if num_items < batch_size:
        raise IQADataError(
            f"{num_items} training crops make no batch of {batch_size}; lower --batch-size or raise --crops-per-image"
        )
    order = _rng(seed, epoch).permutation(num_items)
    return [order[i : i + batch_size].tolist() for i in range(0, num_items - batch_size + 1, batch_size)]


class EvalCrops(Dataset):
    """All the test crops of one image per item, after ``resize``: (crops, 3, S, S), random (seeded by
    image) or uniform."""

    def __init__(
        self,
        table: IQATable,
        indices: list[int],
        crop: int,
        crops: int,
        mode: str,
        seed: int,
        resize: Resize | None = None,
    ):
        crop_positions(crop, crop, crop, crops, mode, _rng(seed))  # validates the settings early
        self.table, self.indices, self.crop, self.resize = table, list(indices), crop, resize
        self.crops, self.mode, self.seed = crops, mode, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> torch.Tensor:
        row = self.indices[item]
        image = prepare_images(load_image(self.table.paths[row]), self.crop, self.resize)
        positions = crop_positions(*image.shape[-2:], self.crop, self.crops, self.mode, _rng(self.seed, row))
        return take_crops(image[None], self.crop, positions)[0]
