"""Training throughput (samples/s) and peak memory with the latent/text cache against without it, in one run.

Each configuration trains in a fresh subprocess (so peak memory is its own): ``on-the-fly`` runs the frozen
VAE encoder and text encoder(s) on every sample of every step; ``cached`` first encodes the data set once
into a cache (timed separately), then trains from it. Both use the same model, data, batch and steps; the
throughput is the median of the logged per-step samples/s after the warm-up steps. Peak memory is the
process's maximum resident set size, and on a GPU also the peak of allocated CUDA memory.

    python benchmarks/bench_training.py                                # tiny SD pipeline, 64 px, CPU
    python benchmarks/bench_training.py --arch sdxl --resolution 1024 --batch-size 4 --mixed-precision bf16
                                       # full SDXL architecture (random weights), on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from child_process import run_child


def make_world(root: Path, arch: str, images: int, size: int) -> None:
    """The base pipeline on disk, captioned JPEG images, and a score table for two metrics."""
    from iqa_adapter.architectures import full_size_pipeline, tiny_sd_pipeline

    pipe = tiny_sd_pipeline(seed=0) if arch == "tiny" else full_size_pipeline(arch)
    pipe.save_pretrained(root / "base")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for index in range(images):
        coarse = rng.random((size // 16, size // 16, 3))
        pixels = np.kron(coarse, np.ones((16, 16, 1))) * 255 + rng.normal(0, 8, (size, size, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(data / f"{index:05d}.jpg", quality=90)
        (data / f"{index:05d}.txt").write_text(f"a textured picture, number {index}")
    (root / "scores").mkdir()
    pd.DataFrame(
        {
            "key": [f"{i:05d}" for i in range(images)],
            "quality": rng.normal(0, 1, images),
            "aesthetics": rng.normal(5, 1, images),
        }
    ).to_parquet(root / "scores" / "scores.parquet")


def child(settings: dict) -> None:
    """Train one configuration and print its figures as JSON (run in a subprocess)."""
    from iqa_adapter.training import TrainConfig, train
    from iqa_adapter.training.cache import build_cache

    cache_seconds = None
    config = TrainConfig(**settings)
    if config.cache_dir:  # build the cache first, timed on its own
        from iqa_adapter.training.base_model import FrozenBase, load_pipeline_for_training

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.mixed_precision]
        base = FrozenBase(load_pipeline_for_training(config.base, device, dtype))
        started = time.perf_counter()
        build_cache(
            config.cache_dir,
            config.data,
            base,
            config.base,
            resolution=config.resolution,
            num_workers=config.num_workers,
            progress=False,
        )
        cache_seconds = time.perf_counter() - started
        del base
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    train(config)
    log = pd.read_csv(Path(config.out) / "logs" / "train_log.csv")
    rates = log["samples_per_s"].tolist()[settings_warmup(config) :]
    print(
        json.dumps(
            {
                "samples_per_s": statistics.median(rates),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
                "cache_seconds": cache_seconds,
            }
        )
    )


def settings_warmup(config) -> int:
    return min(3, config.max_steps - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tiny", choices=["tiny", "sd15", "sdxl"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        make_world(root, args.arch, args.images, max(args.resolution, 64))
        common = dict(
            base=str(root / "base"),
            data=str(root / "data"),
            scores=str(root / "scores"),
            metrics=["quality", "aesthetics"],
            resolution=args.resolution,
            batch_size=args.batch_size,
            max_steps=args.steps,
            num_workers=args.workers,
            mixed_precision=args.mixed_precision,
            checkpoint_every=10**9,
            log_every=1,
            progress=False,
        )
        figures = {}
        for name, extra in (("on-the-fly", {}), ("cached", {"cache_dir": str(root / "cache")})):
            settings = {**common, **extra, "out": str(root / name)}
            figures[name] = run_child(__file__, name, settings)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"{args.arch} pipeline, {args.resolution} px, batch {args.batch_size}, {args.steps} steps, "
        f"{args.mixed_precision} precision, {device}"
    )
    for name, values in figures.items():
        cuda = f", peak CUDA {values['peak_cuda_mb']:.0f} MB" if values["peak_cuda_mb"] is not None else ""
        print(f"  {name:10s} {values['samples_per_s']:8.2f} samples/s, peak RSS {values['peak_rss_mb']:.0f} MB{cuda}")
    cached, plain = figures["cached"], figures["on-the-fly"]
    print(
        f"cache build: {cached['cache_seconds']:.1f} s for {args.images} images; training speed-up with the "
        f"cache {cached['samples_per_s'] / plain['samples_per_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
