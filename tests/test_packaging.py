"""The package as users get it: ``python -m build`` makes a wheel that installs into a fresh virtual environment
and runs ``iqa-adapter generate`` on the toy world it carries."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_in_a_fresh_venv_and_generates_on_its_toy_world(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("iqa_adapter-*.whl"))
    with zipfile.ZipFile(wheel) as archive:  # the web app's pages travel with the package
        shipped = set(archive.namelist())
    for page in ("generate.html", "generate.js", "study.html", "study.js", "results.html", "style.css"):
        assert f"iqa_adapter/app/static/{page}" in shipped
    fresh = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=120)
    python = fresh / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies (torch, diffusers, ...) come from the test environment's site-packages, added as a path; its
    # editable install of this package is not (.pth files of a path added that way are not run).
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]

    out = tmp_path / "images"
    generated = subprocess.run(
        [
            str(fresh / "bin" / "iqa-adapter"),
            "generate",
            "--prompt",
            "a red circle on a plain blue",
            "--quality",
            "cnniqa=p99",
            "--quality",
            "aesthetic=p99",
            "--steps",
            "3",
            "--no-progress",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert generated.returncode == 0, generated.stderr[-2000:]
    sidecar = json.loads((out / "0000.json").read_text())
    assert Path(sidecar["adapter"]).is_relative_to(site_packages)  # the toy world inside the installed wheel
    assert (out / "0000.png").stat().st_size > 0
