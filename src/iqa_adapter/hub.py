"""Reaching the Hugging Face Hub: models named by hub id load from the local cache at once when the Hub cannot
be reached, instead of retrying for half a minute (huggingface_hub backs off and retries on connection errors).
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

PROBE_TIMEOUT_SECONDS = 3.0


def is_local(name: str | os.PathLike) -> bool:
    """Whether ``name`` is a path on this machine (else it is taken for a hub id)."""
    return Path(name).expanduser().exists()


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


@lru_cache(maxsize=4)
def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """Whether a TCP connection to the Hub's endpoint (``HF_ENDPOINT``, default huggingface.co) opens within
    ``timeout`` seconds. Asked once per process and endpoint."""
    parsed = urlparse(endpoint or _endpoint())
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline() -> bool:
    """Whether hub ids must come from the local cache: ``HF_HUB_OFFLINE`` is set or the Hub cannot be reached."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or not hub_reachable()


def loading_options(name: str | os.PathLike) -> dict:
    """Keyword arguments for ``from_pretrained(name, ...)``: ``local_files_only=True`` for a hub id while offline."""
    return {"local_files_only": True} if not is_local(name) and offline() else {}


def not_found_message(name: str, what: str) -> str:
    """Why a hub id could not be loaded while offline, and the fix."""
    from huggingface_hub import constants

    reason = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
              else f"the Hugging Face Hub ({_endpoint()}) cannot be reached")
    return (f"cannot load {what} {name!r}: it is not a local folder, {reason}, and it is not in the local cache "
            f"({constants.HF_HUB_CACHE}); give a local folder, or download it once while online")
