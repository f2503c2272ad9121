"""Small helpers shared by checkpoints, configs and generated outputs."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)``, then rename onto ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes owner-only files; give the file the usual permissions
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps(data, indent=2) + "\n"))


def reject_unknown_fields(config_class, data: dict, what: str, hint: str = "") -> None:
    """Raise ValueError naming the keys of ``data`` that are not fields of the dataclass ``config_class``."""
    import dataclasses

    names = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {what} keys: {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}{hint}")
