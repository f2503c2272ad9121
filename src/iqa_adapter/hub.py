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


def hub_offline_set() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (as huggingface_hub read it)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def offline() -> bool:
    """Whether hub ids must come from the local cache: ``HF_HUB_OFFLINE`` is set or the Hub cannot be reached."""
    return hub_offline_set() or not hub_reachable()


def loading_options(name: str | os.PathLike) -> dict:
    """Keyword arguments for ``from_pretrained(name, ...)``: ``local_files_only=True`` for a hub id while offline."""
    return {"local_files_only": True} if not is_local(name) and offline() else {}


def _offline_reason() -> str:
    return "HF_HUB_OFFLINE is set" if hub_offline_set() else f"the Hugging Face Hub ({_endpoint()}) cannot be reached"


def error_first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none: what one-line errors quote."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def not_found_message(name: str, what: str) -> str:
    """Why a hub id could not be loaded while offline, and the fix."""
    from huggingface_hub import constants

    return (
        f"cannot load {what} {name!r}: it is not a local folder, {_offline_reason()}, and it is not in the local "
        f"cache ({constants.HF_HUB_CACHE}); give a local folder, or download it once while online"
    )


class HubDownloadError(ValueError):
    """A file of a hub repository that cannot be had (offline and not cached, no such repository, revision or
    file); the message names it and the fix."""


def download_file(
    repo_id: str, filename: str, *, what: str, revision: str | None = None, subfolder: str | None = None
) -> Path:
    """The local path of ``filename`` (under ``subfolder``) of the model repository ``repo_id`` at ``revision``,
    through huggingface_hub's download and cache: from the cache alone when :func:`offline`. ``what`` names the
    thing in errors (``"the adapter"``)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    options = loading_options(repo_id)
    shown = "/".join(part for part in (subfolder, filename) if part)
    at = f" at revision {revision or 'main'!r}"
    try:
        return Path(hf_hub_download(repo_id, filename, subfolder=subfolder or None, revision=revision, **options))
    except RepositoryNotFoundError:
        raise HubDownloadError(
            f"cannot load {what} {repo_id!r}: it is not a local folder, and the Hub has no such "
            "repository or it is private (log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise HubDownloadError(f"cannot load {what} {repo_id!r}: it has no revision {revision!r}") from None
    except EntryNotFoundError:  # also a file missing from the local cache while offline
        if options.get("local_files_only"):
            from huggingface_hub import constants

            if not any(Path(constants.HF_HUB_CACHE).glob(f"models--{repo_id.replace('/', '--')}/snapshots/*")):
                raise HubDownloadError(not_found_message(repo_id, what)) from None
            raise HubDownloadError(
                f"cannot load {what} {repo_id!r}: {_offline_reason()}, and its local cache has no "
                f"{shown}{at}; check --revision and --subfolder, or download it once while "
                "online"
            ) from None
        raise HubDownloadError(
            f"cannot load {what} {repo_id!r}: it has no file {shown}{at}; give --subfolder "
            "if the files lie in a folder of the repository"
        ) from None
    except HFValidationError as error:
        raise HubDownloadError(
            f"cannot load {what} {repo_id!r}: it is neither a local folder nor a valid hub id "
            f"({error_first_line(error)})"
        ) from None
    except (OSError, ValueError) as error:
        if options.get("local_files_only"):
            raise HubDownloadError(not_found_message(repo_id, what)) from None
        raise HubDownloadError(
            f"cannot download {shown} of {what} {repo_id!r}{at} ({error_first_line(error)})"
        ) from None


def upload_files(
    repo_id: str,
    files: dict[str, str | os.PathLike | bytes],
    *,
    what: str,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str,
) -> str:
    """Create the model repository ``repo_id`` when it is missing and commit ``files`` (path in the repository ->
    local path or bytes) to it in one commit; returns the commit's URL. Errors name ``what`` and the fix."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    if hub_offline_set():
        raise ValueError(f"cannot upload {what} to {repo_id!r}: HF_HUB_OFFLINE is set; unset it to upload")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        operations = [
            CommitOperationAdd(
                path_in_repo=name, path_or_fileobj=content if isinstance(content, bytes) else str(content)
            )
            for name, content in files.items()
        ]
        return str(api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision).commit_url)
    except HFValidationError as error:
        raise ValueError(
            f"cannot upload {what}: {repo_id!r} is not a valid repository id ({error_first_line(error)}); use org/name"
        ) from None
    except (HfHubHTTPError, OSError) as error:
        raise ValueError(
            f"cannot upload {what} to {repo_id!r} on {_endpoint()} ({error_first_line(error)}); check the "
            "connection and that your token (`hf auth login` or HF_TOKEN) may write there"
        ) from None
