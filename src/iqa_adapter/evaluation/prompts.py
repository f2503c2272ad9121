"""Prompt sets researchers already have, read into one list of :class:`Prompt`.

Formats (``format="auto"`` picks one from the file's suffix and content):

* ``text``: one prompt per non-empty line.
* ``parti``: PartiPrompts' ``PartiPrompts.tsv`` (github google-research/parti): tab-separated, header
  ``Prompt  Category  Challenge  Note``, no quoting (prompts may start with a double quote). ``Category`` is the
  prompt's category; the other columns (``Challenge``, ``Note``) are kept in ``metadata``.
* ``drawbench``: DrawBench's sheet exported as CSV, header ``Prompts,Category`` (the Imagen sheet; copies on
  the Hub use ``prompt``/``prompts`` and ``category`` in any case, and sometimes extra columns, which are kept
  in ``metadata``).
* ``geneval``: GenEval's ``evaluation_metadata.jsonl`` (github djghosh13/geneval, ``prompts/``): one JSON
  object per line with ``prompt``, ``tag`` (the task, used as the category), ``include`` and, for counting,
  ``exclude``. The whole object is kept as ``metadata``, as GenEval's scorer reads it.
* ``coco``: COCO captions (``captions_val2014.json``): ``images`` [{id, file_name}] and ``annotations``
  [{id, image_id, caption}]; one prompt per caption, keyed by the annotation id, with the absolute path of its
  real image. Images are looked for under ``image_root``, else the JSON's folder, its ``images/`` or
  ``val2014``-style folder (named after the file, e.g. ``captions_val2014.json``), or those next to the JSON's
  folder (the usual ``annotations/`` + ``val2014/`` layout). Images are never decoded here.

``Prompt.index`` is the 0-based line (text, JSONL), data row (tables) or annotation number in the file, so it
stays the same under category filters and sampling. ``max_prompts`` keeps a seeded random sample in file order.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..io_utils import read_json
from ..validation import check_int, check_seed

FORMATS = ("text", "parti", "drawbench", "geneval", "coco")
SUFFIX_FORMATS = {".txt": "text", ".tsv": "parti", ".csv": "drawbench", ".jsonl": "geneval", ".json": "coco"}
PROMPT_COLUMNS = ("prompt", "prompts")
CATEGORY_COLUMN = "category"
COCO_SPLIT = re.compile(r"(train|val|test)(\d{4})")


class PromptFileError(ValueError):
    """A prompt file that cannot be read as asked; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class Prompt:
    """One prompt of a prompt set.

    ``metadata`` holds the source's other fields as given (GenEval's whole record; PartiPrompts' ``Challenge``
    and ``Note``; DrawBench's extra columns; COCO's ``image_id`` and ``file_name``). ``image`` is the absolute
    path of the caption's real image (COCO only). ``key`` is a stable id: COCO's annotation id, else the index.
    """

    text: str
    index: int
    category: str | None = None
    metadata: dict = field(default_factory=dict, hash=False)
    image: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.key is None:
            object.__setattr__(self, "key", str(self.index))


class PromptList(list):
    """The prompts :func:`load_prompts` read (a plain list of :class:`Prompt`), with where they came from."""

    def __init__(
        self,
        prompts: Iterable[Prompt],
        *,
        format: str,
        source: str,
        available: int,
        categories: list[str] | None = None,
        sample: dict | None = None,
    ):
        super().__init__(prompts)
        self.format = format
        self.source = source
        self.available = available  # prompts in the file, before any filter or sample
        self.categories = categories  # the categories asked for (None: all)
        self.sample = sample  # {"max_prompts": n, "seed": s} when a random sample was taken

    def describe(self) -> dict:
        """A summary for reports: format, file, counts, categories kept (with counts, in file order), filter and
        sample."""
        categories = Counter(prompt.category for prompt in self if prompt.category is not None)
        return {
            "format": self.format,
            "source": self.source,
            "count": len(self),
            "available": self.available,
            "categories": dict(categories),
            "with_images": sum(prompt.image is not None for prompt in self),
            "category_filter": self.categories,
            "sample": self.sample,
        }


def load_prompts(
    path: str | os.PathLike,
    format: str = "auto",
    categories: str | Sequence[str] | None = None,
    max_prompts: int | None = None,
    seed: int = 0,
    image_root: str | os.PathLike | None = None,
) -> PromptList:
    """The prompts of ``path`` in ``format`` (one of :data:`FORMATS`, or ``auto``).

    ``categories``: keep these categories (PartiPrompts, DrawBench; case-insensitive) or GenEval tags.
    ``max_prompts``: keep a random sample of this many (``numpy.random.default_rng(seed)``), in file order.
    ``image_root``: the folder of COCO's images (default: looked for next to the JSON).
    Raises :class:`PromptFileError` (a ValueError) naming the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise PromptFileError(f"prompt file {path} {problem}; give the path of a prompt file")
    if max_prompts is not None:
        check_int("max_prompts", max_prompts, 1)
    check_seed("seed", seed)
    format = detect_format(path) if format == "auto" else format
    if format not in FORMATS:
        raise PromptFileError(f"unknown prompt format {format!r}; choose one of auto, {', '.join(FORMATS)}")
    prompts = READERS[format](path)
    if not prompts:
        raise PromptFileError(f"prompt file {path} holds no prompts (read as {format}); check the file and its format")
    available, sample = len(prompts), None
    if categories is not None:
        categories = [categories] if isinstance(categories, str) else list(categories)
        prompts = _filter_categories(prompts, categories, path, format)
    if max_prompts is not None and max_prompts < len(prompts):
        chosen = np.sort(np.random.default_rng(seed).choice(len(prompts), size=max_prompts, replace=False))
        prompts = [prompts[i] for i in chosen]
        sample = {"max_prompts": max_prompts, "seed": seed}
    if format == "coco":
        prompts = _with_image_paths(prompts, path, image_root)
    return PromptList(
        prompts, format=format, source=str(path), available=available, categories=categories, sample=sample
    )


def detect_format(path: str | os.PathLike) -> str:
    """The format of a prompt file: from its suffix (tables: PartiPrompts when there is a Challenge column, else
    DrawBench), and without a known suffix from its first line (JSON object: GenEval; a table header; else text)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        return _table_format(_header(path))
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    first_line = _header(path).strip()
    if first_line.startswith("{"):
        return "geneval"
    if "\t" in first_line or ("," in first_line and first_line.split(",")[0].strip().lower() in PROMPT_COLUMNS):
        return _table_format(first_line)
    return "text"


def _table_format(header: str) -> str:
    """PartiPrompts when the table has a Challenge column, else DrawBench."""
    columns = {name.strip().lower() for name in re.split(r"[\t,]", header)}
    return "parti" if "challenge" in columns else "drawbench"


def _header(path: Path) -> str:
    """The first non-empty line of a text file."""
    for line in _lines(path):
        if line.strip():
            return line
    return ""


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise PromptFileError(f"prompt file {path} is not UTF-8 text; save it as UTF-8") from None


def read_text_prompts(path: Path) -> list[Prompt]:
    """One prompt per non-empty line; the index is the line number (0-based)."""
    return [Prompt(line.strip(), index) for index, line in enumerate(_lines(path)) if line.strip()]


def read_table_prompts(path: Path) -> list[Prompt]:
    """A PartiPrompts TSV or DrawBench CSV: a prompt column, an optional category column, others as metadata.

    Tab-separated files are read without quoting (PartiPrompts' prompts contain unescaped quotes); comma-separated
    files with CSV quoting.
    """
    lines = _lines(path)
    tabs = "\t" in _header(path)
    reader = csv.reader(lines, delimiter="\t" if tabs else ",", quoting=csv.QUOTE_NONE if tabs else csv.QUOTE_MINIMAL)
    rows = [row for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [name.strip() for name in rows[0]]
    lowered = [name.lower() for name in header]
    prompt_column = next((lowered.index(name) for name in PROMPT_COLUMNS if name in lowered), None)
    if prompt_column is None:
        raise PromptFileError(
            f"prompt table {path} has no prompt column (found columns: {', '.join(header)}); "
            "name it Prompt (PartiPrompts) or Prompts (DrawBench)"
        )
    category_column = lowered.index(CATEGORY_COLUMN) if CATEGORY_COLUMN in lowered else None
    prompts = []
    for index, row in enumerate(rows[1:]):
        if len(row) > len(header):
            raise PromptFileError(
                f"prompt table {path} row {index + 2} has {len(row)} cells but the header has "
                f"{len(header)}; quote cells that contain the delimiter"
            )
        cells = dict(zip(header, (cell.strip() for cell in row)))
        text = cells.get(header[prompt_column], "")
        if not text:
            continue
        category = (cells.get(header[category_column]) or None) if category_column is not None else None
        metadata = {
            name: value for i, (name, value) in enumerate(cells.items()) if i not in (prompt_column, category_column)
        }
        prompts.append(Prompt(text, index, category, metadata))
    return prompts


def read_geneval_prompts(path: Path) -> list[Prompt]:
    """GenEval's metadata JSONL: the tag is the category and the whole record is the metadata."""
    prompts = []
    for index, line in enumerate(_lines(path)):
        if not line.strip():
            continue
        where = f"GenEval metadata {path} line {index + 1}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptFileError(
                f"{where} is not valid JSON ({error.msg} at column {error.colno}); "
                "repair the line (one JSON object per line)"
            ) from None
        if not isinstance(record, dict):
            raise PromptFileError(
                f"{where} is not a JSON object; each line must be one object with prompt, tag and include"
            )
        missing = [name for name in ("prompt", "tag", "include") if name not in record]
        if missing:
            raise PromptFileError(
                f"{where} has no {', '.join(missing)} (found keys: {', '.join(record)}); GenEval "
                "records hold prompt, tag, include and optionally exclude"
            )
        if not isinstance(record["prompt"], str) or not isinstance(record["include"], list):
            raise PromptFileError(
                f"{where}: prompt must be a string and include a list, got "
                f"{type(record['prompt']).__name__} and {type(record['include']).__name__}"
            )
        prompts.append(Prompt(record["prompt"].strip(), index, str(record["tag"]), record))
    return prompts


def read_coco_prompts(path: Path) -> list[Prompt]:
    """COCO captions: one prompt per annotation, keyed by its id; image paths are resolved later."""
    try:
        data = read_json(path, "COCO captions file")
    except ValueError as error:
        raise PromptFileError(str(error)) from None
    if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
        found = ", ".join(data) if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise PromptFileError(
            f"COCO captions file {path} needs the keys images and annotations (found: {found}); "
            "give a COCO captions file such as captions_val2014.json"
        )
    try:
        file_names = {image["id"]: image["file_name"] for image in data["images"]}
        prompts = []
        for index, annotation in enumerate(data["annotations"]):
            image_id = annotation["image_id"]
            if image_id not in file_names:
                raise PromptFileError(
                    f"COCO captions file {path}: annotation {annotation['id']} names image "
                    f"{image_id}, which is not in images; repair the file"
                )
            metadata = {"image_id": image_id, "file_name": file_names[image_id]}
            prompts.append(Prompt(annotation["caption"].strip(), index, None, metadata, key=str(annotation["id"])))
    except (KeyError, TypeError, AttributeError) as error:
        raise PromptFileError(
            f"COCO captions file {path} has a malformed entry ({type(error).__name__}: {error}); "
            "images need id and file_name, annotations id, image_id and caption"
        ) from None
    return prompts


READERS = {
    "text": read_text_prompts,
    "parti": read_table_prompts,
    "drawbench": read_table_prompts,
    "geneval": read_geneval_prompts,
    "coco": read_coco_prompts,
}


def _filter_categories(prompts: list[Prompt], requested: list[str], path: Path, format: str) -> list[Prompt]:
    """The prompts of the requested categories (case-insensitive); unknown ones raise, listing those present."""
    present = list(dict.fromkeys(prompt.category for prompt in prompts if prompt.category is not None))
    if not present:
        raise PromptFileError(f"prompt file {path} ({format}) has no categories; drop the category filter")
    known = {name.casefold() for name in present}
    unknown = [name for name in requested if name.casefold() not in known]
    if unknown:
        raise PromptFileError(
            f"prompt file {path} has no categor{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(map(repr, unknown))}; it has: {', '.join(present)}"
        )
    wanted = {name.casefold() for name in requested}
    return [prompt for prompt in prompts if prompt.category is not None and prompt.category.casefold() in wanted]


def coco_image_roots(path: Path) -> list[Path]:
    """Where COCO images are looked for: the JSON's folder, its images/ or split folder, and those beside it."""
    folder = path.resolve().parent
    split = COCO_SPLIT.search(path.stem)
    names = ["images"] + ([split.group(0)] if split else [])
    candidates = [folder] + [folder / name for name in names] + [folder.parent / name for name in names]
    return list(dict.fromkeys(candidates))


def _with_image_paths(prompts: list[Prompt], path: Path, image_root: str | os.PathLike | None) -> list[Prompt]:
    """COCO prompts with the absolute path of their image; every image must exist."""
    if image_root is not None:
        root = Path(image_root).expanduser().resolve()
        if not root.is_dir():
            raise PromptFileError(f"COCO image folder {root} does not exist; give the folder of the images")
    else:
        first = prompts[0].metadata["file_name"]
        root = next((folder for folder in coco_image_roots(path) if (folder / first).is_file()), None)
        if root is None:
            tried = ", ".join(str(folder) for folder in coco_image_roots(path))
            raise PromptFileError(
                f"cannot find the images of COCO captions file {path} (looked for {first} in "
                f"{tried}); give the image folder (image_root, --image-root)"
            )
    names = [prompt.metadata["file_name"] for prompt in prompts]
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise PromptFileError(
            f"{len(missing)} of {len(prompts)} images of COCO captions file {path} are missing "
            f"from {root} (first: {missing[0]}); give the right image folder or fetch the images"
        )
    return [replace(prompt, image=str(root / prompt.metadata["file_name"])) for prompt in prompts]
