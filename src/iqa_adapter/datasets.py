"""Readers of image-text datasets, and the decoding of their images.

A reader lists a dataset as :class:`Sample` objects, in a fixed order, without decoding anything: each
sample knows its key, its caption, where its image lives (``source``, for messages) and how to fetch the
encoded bytes (``read``), so that the images are read and decoded later, once, in data-loader workers.
:func:`open_dataset` picks the reader for a ``data`` string:

* a folder of images with a sidecar caption ``NAME.txt`` next to each image ``NAME.jpg`` (searched
  recursively; the key is the path relative to the folder, without extension);
* a listing of image files and captions: ``captions.jsonl`` or ``captions.csv`` inside the folder, or any
  ``.jsonl`` / ``.csv`` file given directly (columns :data:`FILE_COLUMNS`, :data:`CAPTION_COLUMNS` and an
  optional ``key``; relative paths are relative to the listing);
* webdataset shards as written by img2dataset: ``.tar`` files holding ``KEY.jpg`` (or png, webp...),
  ``KEY.txt`` and ``KEY.json``, given as one path, a glob (``shards/*.tar``), brace ranges
  (``shards/{00000..00009}.tar``) or a folder of shards;
* parquet files holding image bytes (a binary column, or a struct with ``bytes`` as Hugging Face datasets
  write) or image paths; see :class:`ParquetReader` for the columns.

Entries that cannot give an image (a caption without an image, a missing file) are still listed: reading
them raises, and the caller records the reason. :func:`load_image` turns a sample into a uint8 tensor.
"""

from __future__ import annotations

import csv
import functools
import glob
import itertools
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import DEFAULT_MAX_PIXELS, is_high_depth, open_image, resized, rgb_array, to_rgb

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
LISTING_FILES = ("captions.jsonl", "captions.csv")
FILE_COLUMNS = ("file", "file_name", "path", "image_path", "image")
CAPTION_COLUMNS = ("caption", "txt", "text")
KEY_COLUMNS = ("key", "__key__")
PARQUET_BYTES_COLUMNS = ("jpg", "png", "webp", "image", "image_bytes")
PARQUET_PATH_COLUMNS = ("path", "file", "image_path", "file_name")
SUPPORTED_INPUTS = (
    "a folder of images with .txt captions, a folder with captions.jsonl or captions.csv, "
    "a .jsonl/.csv listing, webdataset .tar shards (a path, a glob or a brace range such as "
    "'shards/{00000..00009}.tar') or .parquet files"
)


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the problem and the fix."""


class MissingImageError(FileNotFoundError):
    """A listed entry has no image."""


@dataclass(frozen=True)
class Sample:
    """One image-text pair of a dataset, not yet read.

    ``read()`` returns the encoded image bytes and raises when there are none (a caption without an
    image, a missing file). ``source`` says where the image lives, for error messages and reports: a
    path, ``shard.tar:KEY.jpg`` or ``file.parquet:row 12``.
    """

    key: str
    caption: str
    source: str
    read: Callable[[], bytes]


# ---------------------------------------------------------------- reading bytes (run in loader workers)


def read_file(path: str) -> bytes:
    """The bytes of a file."""
    with open(path, "rb") as handle:
        return handle.read()


def read_tar_member(path: str, offset: int, size: int) -> bytes:
    """The ``size`` bytes at ``offset`` of a tar file (a member's data, without unpacking the archive)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise EOFError(f"tar file is truncated: {len(data)} of {size} bytes")
    return data


@functools.lru_cache(maxsize=2)
def _parquet_column(path: str, modified: int, row_group: int, column: str):
    """One column of one row group (cached, by file version: a worker reads the rows of a row group in turn)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(row_group, columns=[column]).column(0)


def read_parquet_image(path: str, row_group: int, row: int, column: str) -> bytes:
    """The image bytes in one cell of a parquet file (binary, or a struct with a ``bytes`` field)."""
    value = _parquet_column(path, os.stat(path).st_mtime_ns, row_group, column)[row].as_py()
    if isinstance(value, dict):
        value = value.get("bytes")
    if value is None:
        raise MissingImageError(f"no image bytes in column {column!r}")
    return value


def missing_image(reason: str) -> bytes:
    """The ``read`` of an entry that has no image: raises with the reason."""
    raise MissingImageError(reason)


# ---------------------------------------------------------------- decoding


def decode_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode encoded image bytes completely, in the image's own mode; raises ImageReadError on corrupt,
    truncated or oversized data (:func:`iqa_adapter.images.open_image`)."""
    return open_image(data, max_pixels=max_pixels)


RESIZE_MODES = ("pil-bicubic", "tensor-bilinear")
"""How annotation resizes: PIL's bicubic filter (antialiased when shrinking; the default), or bilinear
interpolation of the float tensor without antialiasing (``torch.nn.functional.interpolate``), as the official
IQA-Adapter scoring resized to 512x512."""


def resize_image(image: Image.Image, size: int | None) -> Image.Image:
    """Resize to ``size`` x ``size`` pixels (bicubic, aspect ratio not kept), or keep the size for ``None``."""
    return resized(image, None if size is None else (size, size))


@dataclass(frozen=True)
class DecodedImage:
    """A sample's image after resizing, with its original size; or why it has none.

    The image is uint8 (3, H, W) for 8-bit images, and float32 (3, H, W) in [0, 1] for 16-bit and float
    images, which keep their precision.
    """

    image: torch.Tensor | None
    width: int | None = None
    height: int | None = None
    reason: str | None = None


def load_image(
    sample: Sample, resize: int | None, max_pixels: int | None = DEFAULT_MAX_PIXELS, resize_mode: str = "pil-bicubic"
) -> DecodedImage:
    """Read, decode and resize (:data:`RESIZE_MODES`) a sample's image; failures come back as a reason, never as
    an exception."""
    try:
        data = sample.read()
    except Exception as error:  # noqa: BLE001 - any unreadable entry is reported, not fatal
        return DecodedImage(None, reason=f"cannot read image: {error}")
    try:
        image = decode_image(data, max_pixels)
    except Exception as error:  # noqa: BLE001 - PIL raises many types for corrupt data
        return DecodedImage(None, reason=f"cannot decode image: {error}")
    width, height = image.size
    if resize is not None and resize_mode == "tensor-bilinear":
        pixels = torch.from_numpy(rgb_array(image)).permute(2, 0, 1)[None]
        pixels = F.interpolate(pixels, size=(resize, resize), mode="bilinear", align_corners=False, antialias=False)
        return DecodedImage(pixels[0].clamp_(0, 1).contiguous(), width, height)
    image = resize_image(image, resize)
    if is_high_depth(image):
        pixels = torch.from_numpy(rgb_array(image)).permute(2, 0, 1).contiguous()
    else:
        pixels = torch.from_numpy(np.array(to_rgb(image), dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return DecodedImage(pixels, width, height)


# ---------------------------------------------------------------- paths


def expand_braces(pattern: str) -> list[str]:
    """Expand shell-style braces: ``{00000..00003}`` (zero padding kept), ``{9..7}`` and ``{a,b}``."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    numeric_range = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric_range:
        first, last = numeric_range.groups()
        padded = (len(first) > 1 and first.startswith("0")) or (len(last) > 1 and last.startswith("0"))
        width = max(len(first), len(last)) if padded else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(number).zfill(width) for number in range(int(first), int(last) + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        return [head + "{" + body + "}" + expanded for expanded in expand_braces(tail)]
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def expand_paths(data: str) -> list[Path]:
    """The existing paths named by ``data``: a path, a glob, or brace ranges (globs sorted, braces in order)."""
    paths: list[Path] = []
    missing: list[str] = []
    for pattern in expand_braces(os.path.expanduser(data)):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        found = [Path(match) for match in matches if os.path.exists(match)]
        paths += found
        if not found:
            missing.append(pattern)
    if missing:
        raise DatasetError(
            f"{data!r}: {len(missing)} path(s) do not exist (first: {missing[0]}); check the path, glob or brace range"
        )
    return paths


def _pick_column(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((name for name in candidates if name in columns), None)


# ---------------------------------------------------------------- readers


@dataclass(frozen=True)
class FolderReader:
    """Images in a folder and its subfolders, each with an optional sidecar caption ``NAME.txt``.

    A ``.txt`` file without an image of the same name is listed as an entry without image.
    """

    root: Path

    def __iter__(self) -> Iterator[Sample]:
        for directory, subdirectories, files in os.walk(self.root):
            subdirectories.sort()
            directory = Path(directory)
            stems_with_images = {Path(name).stem for name in files if Path(name).suffix.lower() in IMAGE_EXTENSIONS}
            for name in sorted(files):
                path = directory / name
                key = path.relative_to(self.root).with_suffix("").as_posix()
                suffix = path.suffix.lower()
                if suffix in IMAGE_EXTENSIONS:
                    caption_file = path.with_suffix(".txt")
                    caption = caption_file.read_text(errors="replace").strip() if caption_file.exists() else ""
                    yield Sample(key, caption, str(path), functools.partial(read_file, str(path)))
                elif suffix == ".txt" and path.stem not in stems_with_images:
                    yield Sample(
                        key,
                        path.read_text(errors="replace").strip(),
                        str(path),
                        functools.partial(missing_image, "caption file without an image"),
                    )


@dataclass(frozen=True)
class ListingReader:
    """Image files and captions listed in a ``.jsonl`` or ``.csv`` file (paths relative to the listing)."""

    listing: Path

    def __iter__(self) -> Iterator[Sample]:
        rows = self._rows()
        first = next(rows, None)
        if first is None:
            return
        columns = list(first)
        file_column = _pick_column(columns, FILE_COLUMNS)
        if file_column is None:
            raise DatasetError(
                f"{self.listing}: no image file column; expected one of {', '.join(FILE_COLUMNS)}, "
                f"found {', '.join(columns)}"
            )
        caption_column = _pick_column(columns, CAPTION_COLUMNS)
        key_column = _pick_column(columns, KEY_COLUMNS)
        for number, row in enumerate(itertools.chain([first], rows), start=1):
            if not row.get(file_column):
                raise DatasetError(f"{self.listing} row {number} has no {file_column!r}; every row needs an image file")
            path = self.listing.parent / str(row[file_column])
            key = str(row[key_column]) if key_column else Path(str(row[file_column])).with_suffix("").as_posix()
            caption = str(row.get(caption_column) or "") if caption_column else ""
            yield Sample(key, caption, str(path), functools.partial(read_file, str(path)))

    def _rows(self) -> Iterator[dict]:
        with open(self.listing, newline="") as handle:
            if self.listing.suffix.lower() == ".csv":
                yield from csv.DictReader(handle)
                return
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DatasetError(
                        f"{self.listing} line {number} is not valid JSON ({error}); fix or remove the line"
                    ) from None
                if not isinstance(row, dict):
                    raise DatasetError(
                        f"{self.listing} line {number}: expected a JSON object with the file and "
                        f"caption, got {type(row).__name__}"
                    )
                yield row


def _member_key(name: str) -> tuple[str, str]:
    """A webdataset member's sample key and extension: ``dir/0001.seg.png`` -> (``dir/0001``, ``seg.png``)."""
    directory, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


@dataclass(frozen=True)
class ShardReader:
    """Webdataset ``.tar`` shards (img2dataset's output): the members of a sample are consecutive and share
    a key, ``KEY.jpg`` (or another image extension) with ``KEY.txt`` and ``KEY.json``.

    A sample without an image member is listed as an entry without image; an unreadable shard is listed as
    one entry named after the shard.
    """

    shards: tuple[Path, ...]

    def __iter__(self) -> Iterator[Sample]:
        for shard in self.shards:
            try:
                with tarfile.open(shard) as tar:
                    members = (member for member in tar if member.isfile())
                    for key, group in itertools.groupby(members, key=lambda member: _member_key(member.name)[0]):
                        yield self._sample(shard, tar, key, list(group))
            except (tarfile.TarError, OSError) as error:
                yield Sample(
                    shard.name, "", str(shard), functools.partial(missing_image, f"unreadable tar shard: {error}")
                )

    @staticmethod
    def _sample(shard: Path, tar: tarfile.TarFile, key: str, members: list[tarfile.TarInfo]) -> Sample:
        by_extension = {_member_key(member.name)[1]: member for member in members}
        caption_member = by_extension.get("txt")
        caption = tar.extractfile(caption_member).read().decode("utf-8", "replace").strip() if caption_member else ""
        image = next(
            (member for extension, member in by_extension.items() if f".{extension}" in IMAGE_EXTENSIONS), None
        )
        if image is None:
            names = ", ".join(member.name for member in members)
            return Sample(
                key,
                caption,
                f"{shard}:{members[0].name}",
                functools.partial(missing_image, f"no image in this sample (members: {names})"),
            )
        return Sample(
            key,
            caption,
            f"{shard}:{image.name}",
            functools.partial(read_tar_member, str(shard), image.offset_data, image.size),
        )


class ParquetColumns(NamedTuple):
    """The columns of a parquet file that a :class:`ParquetReader` uses (key and caption are optional)."""

    image: str
    holds_bytes: bool
    key: str | None
    caption: str | None


@dataclass(frozen=True)
class ParquetReader:
    """Parquet files with one sample per row, read one row group at a time.

    The image is the first column present of :data:`PARQUET_BYTES_COLUMNS` holding bytes (binary, or a
    struct with a ``bytes`` field as Hugging Face datasets write), else of :data:`PARQUET_PATH_COLUMNS`
    holding paths (relative to the parquet file). The key is the ``key`` column, or else the row's index
    over all files (``"0"``, ``"1"``, ...); the caption is the first of :data:`CAPTION_COLUMNS`, or empty.
    """

    files: tuple[Path, ...]

    def __post_init__(self) -> None:
        for path in self.files:
            self._columns(path)  # fail early, with the columns found, on files that are not image datasets

    def __iter__(self) -> Iterator[Sample]:
        import pyarrow.parquet as pq

        index = 0
        for path in self.files:
            columns = self._columns(path)
            listed = [name for name in (columns.key, columns.caption) if name]
            if not columns.holds_bytes:
                listed.append(columns.image)
            parquet = pq.ParquetFile(path)
            for row_group in range(parquet.num_row_groups):
                table = parquet.read_row_group(row_group, columns=listed)
                values = {name: table.column(name).to_pylist() for name in listed}
                for row in range(table.num_rows):
                    key = str(values[columns.key][row]) if columns.key else str(index)
                    caption = str(values[columns.caption][row] or "") if columns.caption else ""
                    if columns.holds_bytes:
                        read = functools.partial(read_parquet_image, str(path), row_group, row, columns.image)
                        source = f"{path}:row {index}"
                    else:
                        source = str(path.parent / str(values[columns.image][row]))
                        read = functools.partial(read_file, source)
                    yield Sample(key, caption, source, read)
                    index += 1

    @staticmethod
    def _columns(path: Path) -> ParquetColumns:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as error:
            raise DatasetError(f"{path}: not a readable parquet file ({error})") from None
        names = schema.names

        def holds_bytes(name: str) -> bool:
            kind = schema.field(name).type
            if pa.types.is_struct(kind):
                return kind.get_field_index("bytes") >= 0
            return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)

        def holds_text(name: str) -> bool:
            kind = schema.field(name).type
            return pa.types.is_string(kind) or pa.types.is_large_string(kind)

        bytes_column = next((name for name in PARQUET_BYTES_COLUMNS if name in names and holds_bytes(name)), None)
        path_column = next((name for name in PARQUET_PATH_COLUMNS if name in names and holds_text(name)), None)
        if bytes_column is None and path_column is None:
            raise DatasetError(
                f"{path}: no image column; expected image bytes in one of {', '.join(PARQUET_BYTES_COLUMNS)} "
                "(binary, or a struct with 'bytes' as Hugging Face datasets write) or image paths in one of "
                f"{', '.join(PARQUET_PATH_COLUMNS)}; found columns: {', '.join(names)}"
            )
        return ParquetColumns(
            image=bytes_column or path_column,
            holds_bytes=bytes_column is not None,
            key=_pick_column(names, KEY_COLUMNS),
            caption=_pick_column(names, CAPTION_COLUMNS),
        )


ImageTextReader = FolderReader | ListingReader | ShardReader | ParquetReader


def open_dataset(data: str) -> ImageTextReader:
    """The reader for ``data``: a folder, a ``.jsonl``/``.csv`` listing, ``.tar`` shards or ``.parquet`` files
    (one path, a glob or brace ranges). Iterating the reader lists the samples in a fixed order."""
    paths = expand_paths(data)
    if len(paths) == 1 and paths[0].is_dir():
        return _open_folder(paths[0])
    suffixes = {path.suffix.lower() for path in paths}
    if suffixes == {".tar"}:
        return ShardReader(tuple(paths))
    if suffixes == {".parquet"}:
        return ParquetReader(tuple(paths))
    if len(paths) == 1 and suffixes <= {".jsonl", ".csv"}:
        return ListingReader(paths[0])
    found = ", ".join(sorted(suffix or "(none)" for suffix in suffixes))
    raise DatasetError(
        f"{data!r}: cannot tell the dataset format from the file types ({found}); give {SUPPORTED_INPUTS}"
    )


def _open_folder(folder: Path) -> ImageTextReader:
    """A listing file in the folder, else the ``.tar`` shards in it, else its images."""
    for name in LISTING_FILES:
        if (folder / name).is_file():
            return ListingReader(folder / name)
    shards = sorted(folder.glob("*.tar"))
    return ShardReader(tuple(shards)) if shards else FolderReader(folder)
