"""``iqa-adapter demo``: the main job on the embedded default model.

Until the project ships its trained toy world, the embedded default is a tiny SD-shaped pipeline with
random weights built from a config, and an adapter initialised as training would initialise it (quality
K/V copied from the text K/V, seeded random projection), conditioned on the CC3M statistics of topiq_nr and
laion_aes. Its images are noise-like: the demo shows the mechanics (a percentile sweep through an unmodified
diffusers pipeline, sidecars, grid) and measures that lambda = 0 reproduces the base model exactly while
the quality target changes the output when lambda > 0.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .adapter import IQAAdapter
from .architectures import tiny_sd_pipeline
from .generation import generate, save_images, sweep_grid, sweep_qualities
from .io_utils import write_json
from .stats import cc3m_stats

DEMO_PROMPTS = ("a red circle on a blue background", "a green square, high detail")
DEMO_PERCENTILES = ("p1", "p25", "p50", "p75", "p99")


def _pixels(results) -> np.ndarray:
    return np.stack([np.asarray(result.image, dtype=np.float32) / 255.0 for result in results])


def run_demo(out_dir: str | Path, steps: int = 20, seeds: int = 2) -> dict:
    """Generate a topiq_nr percentile sweep on the embedded default and write images, grid and report."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    pipe = tiny_sd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    stats = cc3m_stats()
    adapter = IQAAdapter.for_unet(pipe, [stats["topiq_nr"], stats["laion_aes"]], seed=0, base_model="tiny-sd (random)")
    adapter.attach(pipe)
    qualities = sweep_qualities({"laion_aes": "p50"}, "topiq_nr", DEMO_PERCENTILES)
    settings = dict(seed=0, num_images=seeds, steps=steps, guidance=7.5)
    sweep = generate(pipe, adapter, DEMO_PROMPTS, qualities, **settings)
    save_images(sweep, out_dir / "images")
    grid_path = out_dir / "sweep_topiq_nr.png"
    sweep_grid(sweep, "topiq_nr").save(grid_path)

    at_zero = generate(pipe, adapter, DEMO_PROMPTS, qualities[:1], scale=0.0, progress=False, **settings)
    adapter.detach()
    base = pipe(prompt=[p for p in DEMO_PROMPTS for _ in range(seeds)], num_inference_steps=steps, guidance_scale=7.5,
                generator=[torch.Generator().manual_seed(s) for _ in DEMO_PROMPTS for s in range(seeds)]).images
    base_pixels = np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in base])

    pixels = _pixels(sweep).reshape(len(DEMO_PROMPTS), len(DEMO_PERCENTILES), seeds, *base_pixels.shape[1:])
    low, high = pixels[:, 0], pixels[:, -1]
    report = {
        "model": "tiny SD pipeline with random weights (placeholder until the toy world ships)",
        "images": len(sweep),
        "grid": str(grid_path),
        "mean_abs_pixel_difference_p1_vs_p99": float(np.abs(high - low).mean()),
        "max_abs_pixel_difference_lambda0_vs_base": float(np.abs(_pixels(at_zero) - base_pixels).max()),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(out_dir / "report.json", report)
    print(f"demo: {report['images']} images in {out_dir / 'images'}, grid {grid_path}")
    print(f"  mean |p99 - p1| pixel difference: {report['mean_abs_pixel_difference_p1_vs_p99']:.4f}")
    print(f"  max |lambda=0 - base| pixel difference: {report['max_abs_pixel_difference_lambda0_vs_base']:.4f}")
    print(f"  {report['seconds']} s; report {out_dir / 'report.json'}")
    return report
