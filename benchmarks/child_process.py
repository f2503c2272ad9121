"""Benchmarks that measure peak memory run each configuration in a fresh process: this runs one."""

from __future__ import annotations

import json
import subprocess
import sys


def run_child(script: str, name: str, settings: dict) -> dict:
    """Run ``script --child <settings as JSON>`` and return the JSON object its last output line holds."""
    finished = subprocess.run(
        [sys.executable, script, "--child", json.dumps(settings)], capture_output=True, text=True, check=False
    )
    if finished.returncode:
        raise SystemExit(f"{name} failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])
