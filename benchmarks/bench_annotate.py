"""Annotation throughput: each of three metrics alone, and the three in one pass, in one run.

`iqa-adapter annotate` decodes and resizes each image once and scores it with every metric, so scoring
three metrics in one pass should cost clearly less than three single-metric passes. The script writes a
folder of JPEG photographs-like images (smooth random textures with captions) and times
:func:`iqa_adapter.annotate.annotate` on it, every configuration in a fresh output folder; the passes are
repeated ``--rounds`` times, interleaved, and the medians reported.

    python benchmarks/bench_annotate.py                    # 200 images of 640x480, resized to 512 (paper)
    python benchmarks/bench_annotate.py --metrics piqe,sharpness,colorfulness   # a heavier metric
    python benchmarks/bench_annotate.py --images 2000 --workers 8 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from iqa_adapter.annotate import annotate

METRICS = ("sharpness", "noise", "colorfulness")


def write_images(folder: Path, count: int, width: int, height: int) -> None:
    """JPEG images of smooth random colour fields with a little noise, and sidecar captions."""
    generator = torch.Generator().manual_seed(0)
    for index in range(count):
        coarse = torch.rand(1, 3, height // 32, width // 32, generator=generator)
        field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
        field = field + 0.03 * torch.randn(field.shape, generator=generator)
        pixels = (field.clamp(0, 1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{index:06d}.jpg", quality=90)
        (folder / f"{index:06d}.txt").write_text(f"texture number {index}")


def timed_pass(data: Path, metrics: list[str], out: Path, args) -> float:
    start = time.perf_counter()
    annotate(
        str(data),
        metrics,
        out,
        batch_size=args.batch_size,
        num_workers=args.workers,
        resize=args.resize,
        device=args.device,
        chunk_size=10**9,
        progress=False,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--resize", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--metrics", default=",".join(METRICS), help="three (or more) comma-separated metrics")
    args = parser.parse_args()
    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()]

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        data = root / "data"
        data.mkdir()
        write_images(data, args.images, args.width, args.height)
        configurations = {name: [name] for name in metrics} | {"all together": metrics}
        seconds: dict[str, list[float]] = {name: [] for name in configurations}
        run = 0
        for round_index in range(args.rounds + 1):  # round 0 warms up caches and is discarded
            for name, metrics in configurations.items():
                run += 1
                elapsed = timed_pass(data, metrics, root / f"out{run}", args)
                if round_index:
                    seconds[name].append(elapsed)

    print(
        f"{args.images} JPEG images {args.width}x{args.height}, resized to {args.resize}, batch {args.batch_size}, "
        f"{args.workers} loader worker(s), {args.device}; median of {args.rounds} rounds"
    )
    median = {name: statistics.median(values) for name, values in seconds.items()}
    for name, value in median.items():
        print(f"  {name:14s} {value:7.2f} s  {args.images / value:8.1f} images/s")
    separate = sum(median[name] for name in metrics)
    print(
        f"{len(metrics)} single-metric passes {separate:.2f} s vs one {len(metrics)}-metric pass "
        f"{median['all together']:.2f} s: ratio {separate / median['all together']:.2f}x"
    )


if __name__ == "__main__":
    main()
