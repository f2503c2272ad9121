"""Where pairs go: the layouts restoration code reads, written chunk by chunk, atomically.

* ``folder``: BasicSR's paired folders (``PairedImageDataset`` with ``dataroot_gt`` and ``dataroot_lq``):
  ``hq/NAME.png`` and ``lq/NAME.png``, the same name for the two images of a pair;
* ``webdataset``: tar shards ``shards/pairs-NNNNNN.tar`` (one per chunk that kept a pair) holding ``NAME.hq.png``,
  ``NAME.lq.png`` and ``NAME.json`` (prompt, seed, targets, scores of every metric on both images, filter values).

Only kept pairs go there; with ``save_dropped`` the dropped ones go to the same layout under ``dropped/``. Every
file is written to a temporary name and renamed into place, so a killed run never leaves half a file, and a chunk
written again (after a kill) writes the same bytes: PNGs from the same pixels, tar members without dates or owners.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..io_utils import atomic_write

LAYOUTS = ("folder", "webdataset")
DROPPED_DIR = "dropped"
SHARDS_DIR = "shards"


@dataclass
class PairRecord:
    """One pair: its name, its two images and everything known about it (JSON-ready)."""

    name: str
    hq: Image.Image
    lq: Image.Image
    info: dict

    @property
    def kept(self) -> bool:
        return bool(self.info["kept"])


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_folder(root: Path, records: Sequence[PairRecord]) -> None:
    """``root/hq/NAME.png`` and ``root/lq/NAME.png`` per pair."""
    for record in records:
        for part, image in (("hq", record.hq), ("lq", record.lq)):
            data = png_bytes(image)
            atomic_write(root / part / f"{record.name}.png", lambda path, data=data: Path(path).write_bytes(data))


def shard_path(root: Path, chunk: int) -> Path:
    return root / SHARDS_DIR / f"pairs-{chunk:06d}.tar"


def write_shard(path: Path, records: Sequence[PairRecord]) -> None:
    """One webdataset shard of the pairs: ``NAME.hq.png``, ``NAME.lq.png``, ``NAME.json`` each."""

    def write(temporary: str) -> None:
        with tarfile.open(temporary, "w", format=tarfile.USTAR_FORMAT) as tar:
            for record in records:
                members = {
                    "hq.png": png_bytes(record.hq),
                    "lq.png": png_bytes(record.lq),
                    "json": json.dumps(record.info, sort_keys=True).encode(),
                }
                for suffix, data in members.items():
                    member = tarfile.TarInfo(f"{record.name}.{suffix}")
                    member.size, member.mode = len(data), 0o644
                    tar.addfile(member, io.BytesIO(data))

    atomic_write(path, write)


class PairWriter:
    """Writes a chunk's pairs in one of :data:`LAYOUTS` under ``out_dir`` (dropped ones under ``dropped/`` when
    ``save_dropped``)."""

    def __init__(self, out_dir: str | Path, layout: str = "folder", save_dropped: bool = False):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.out_dir, self.layout, self.save_dropped = Path(out_dir), layout, save_dropped

    def write(self, chunk: int, records: Sequence[PairRecord]) -> None:
        groups = [(self.out_dir, [record for record in records if record.kept])]
        if self.save_dropped:
            groups.append((self.out_dir / DROPPED_DIR, [record for record in records if not record.kept]))
        for root, chosen in groups:
            if self.layout == "folder":
                write_folder(root, chosen)
            elif chosen:
                write_shard(shard_path(root, chunk), chosen)
