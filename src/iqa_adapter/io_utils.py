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
        raise ValueError(f"{what} has unknown keys: {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}{hint}")


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    """The JSON content of ``path``; a missing or broken file raises an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not a text file") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{what} {path} is not valid JSON ({error.msg} at line {error.lineno}, column "
            f"{error.colno}); repair it or write it again"
        ) from None


PICKLE_HINT = "it looks like a torch pickle file, not safetensors"


def _looks_like_pickle(path: Path) -> bool:
    """Torch pickles are zip archives (``PK``) or start with the pickle protocol byte 0x80."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def load_safetensors(path: str | os.PathLike, what: str = "weights file") -> dict:
    """All tensors of a safetensors file; an empty, truncated or foreign file raises a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return load_file(path)
    except SafetensorError as error:
        reason = PICKLE_HINT if _looks_like_pickle(path) else "the file is empty, truncated or corrupt"
        raise ValueError(f"{what} {path} is not a readable safetensors file ({error}): {reason}") from None
