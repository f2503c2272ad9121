"""Peak memory and time of every built-in metric on one very large image and on a batch of small ones.

Each metric scores (a) one ``--size`` x ``--size`` image and (b) a batch of ``--batch`` images of
``--batch-size-px`` pixels a side, each in a fresh subprocess. The input (float32, smooth random colour
fields with a little noise) is made first; the figure is the peak resident set size while scoring, minus
the resident size just before it (the peak is reset with ``/proc/self/clear_refs``, so this needs Linux).
The metrics work in steps of ``PIXELS_PER_STEP`` pixels (:mod:`iqa_adapter.metrics.classical`); set
``--pixels-per-step`` to a huge value to score whole batches in one step, as before the steps existed.
NIQE uses ``--niqe-params``, or a 96-pixel model fitted on a few random images first.

    python benchmarks/bench_metric_memory.py                         # 6000x6000, and 16 x 512x512
    python benchmarks/bench_metric_memory.py --size 3000 --metrics piqe,sharpness --pixels-per-step 1e12
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from child_process import run_child
from iqa_adapter.metrics import classical, create_metric
from iqa_adapter.metrics.niqe import fit_niqe, save_niqe_params

METRICS = ("niqe", "piqe", "sharpness", "noise", "blockiness", "colorfulness", "contrast")


def smooth_images(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Images (count, 3, height, width) in [0, 1]: random colour fields upsampled from 1/32 size, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, max(height // 32, 2), max(width // 32, 2), generator=generator)
    images = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    images += 0.02 * torch.randn(images.shape, generator=generator)
    return images.clamp_(0, 1)


def fit_params(folder: Path) -> Path:
    """A 96-pixel NIQE model fitted on a few random images (a stand-in for a real pristine model)."""
    mu, cov = fit_niqe((smooth_images(1, 384, 384, seed)[0] for seed in range(6)), patch_size=96)
    path = folder / "niqe.safetensors"
    save_niqe_params(path, mu, cov, patch_size=96)
    return path


def resident_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def child(settings: dict) -> None:
    """Score one configuration and print its figures as JSON (run in a subprocess)."""
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    if settings["pixels_per_step"]:
        classical.PIXELS_PER_STEP = int(settings["pixels_per_step"])
    options = {"params": settings["niqe_params"]} if settings["metric"] == "niqe" else {}
    metric = create_metric(settings["metric"], **options)
    images = smooth_images(settings["count"], settings["side"], settings["side"])
    metric.score(images[:1, :, :256, :256])  # warm-up: first-call allocations and lazy initialisation
    times = []
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident size
    before = resident_mb("VmRSS")
    for _ in range(settings["repeats"]):
        start = time.perf_counter()
        metric.score(images)
        times.append(time.perf_counter() - start)
    print(json.dumps({"peak_mb": resident_mb("VmHWM") - before, "seconds": statistics.median(times)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=6000, help="side of the single large image")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batch-size-px", type=int, default=512, help="side of the images of the batch")
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls on the batch (median)")
    parser.add_argument("--pixels-per-step", type=float, default=None, help="override classical.PIXELS_PER_STEP")
    parser.add_argument("--niqe-params", default=None, help="NIQE model (default: fit a 96-pixel one)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()]
    configurations = {
        f"1 x {args.size}^2": (1, args.size, 1),
        f"{args.batch} x {args.batch_size_px}^2": (args.batch, args.batch_size_px, args.repeats),
    }
    print(
        f"float32 input, CPU, {args.threads or torch.get_num_threads()} threads, "
        f"{args.pixels_per_step or classical.PIXELS_PER_STEP:.3g} pixels per step; the input itself is not counted"
    )
    print(f"{'metric':13s} {'input':14s} {'peak extra MB':>13s} {'MB per MP':>10s} {'ms per image':>13s}")
    with tempfile.TemporaryDirectory() as scratch:
        niqe_params = args.niqe_params or (str(fit_params(Path(scratch))) if "niqe" in metrics else None)
        for name in metrics:
            for configuration, (count, side, repeats) in configurations.items():
                settings = {
                    "metric": name,
                    "count": count,
                    "side": side,
                    "repeats": repeats,
                    "pixels_per_step": args.pixels_per_step,
                    "niqe_params": niqe_params,
                    "threads": args.threads,
                }
                figures = run_child(__file__, f"{name} on {configuration}", settings)
                megapixels = count * side * side / 1e6
                print(
                    f"{name:13s} {configuration:14s} {figures['peak_mb']:13.0f} "
                    f"{figures['peak_mb'] / megapixels:10.1f} {1000 * figures['seconds'] / count:13.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
