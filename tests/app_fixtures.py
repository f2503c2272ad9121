"""A real `iqa-adapter app` server in a subprocess, for the app's tests (API, browser, load)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from iqa_adapter.app.process import AppProcess


class AppServer(AppProcess):
    """The app for the tests: its log in ``cwd``, and JSON ``get`` / ``post`` helpers."""

    def __init__(self, arguments: list[str], cwd: Path, port: int | None = None) -> None:
        super().__init__(arguments, port=port, cwd=cwd)

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


def condition_folders(root: Path, conditions: list[str], keys: int, size: int = 32, seed: int = 0) -> Path:
    """An evaluate-like output: ``root/images/<condition>/<key>_s0.png``, random images of ``size`` px."""
    rng = np.random.default_rng(seed)
    for condition in conditions:
        for key in range(keys):
            path = root / "images" / condition / f"{key:05d}_s0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return root
