"""Paired-dataset throughput on the embedded toy world: pairs per second, made and written, and the share kept.

`make_pairs` generates the high-quality image of every prompt and seed once and one degraded image per low
level, scores both with the adapter's metrics, measures the content filter (blurred SSIM, and the toy readers with
--readers) and writes the kept pairs. The script times it for each output layout in a fresh folder (the model load
is not timed) and prints pairs/s, images/s and the kept share with the drop reasons.

    python benchmarks/bench_pairs.py                               # 16 prompts x 2 seeds x 2 levels, 20 steps
    python benchmarks/bench_pairs.py --prompts 64 --levels p1 --readers --threads 2 --adapter main
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--levels", default="p1,p10", help="low targets of every conditioning metric")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the toy world's)")
    parser.add_argument("--layouts", default="folder,webdataset")
    parser.add_argument("--readers", action="store_true", help="also check the prompt with the toy readers")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--adapter", default="cnniqa", help="the toy world's adapter (main, loda, cnniqa, aesthetic; as demo --pairs)"
    )
    args = parser.parse_args()

    import torch

    from iqa_adapter import IQAAdapter
    from iqa_adapter.demo import demo_metric_specs
    from iqa_adapter.evaluation.passes import score_columns
    from iqa_adapter.evaluation.prompts import Prompt
    from iqa_adapter.pairs import (
        ContentFilter,
        PairSettings,
        make_pairs,
        quality_levels,
    )
    from iqa_adapter.pipelines import load_pipeline
    from iqa_adapter.toy.caption_check import ToyCaptionScorer
    from iqa_adapter.toy.scenes import scene_for
    from iqa_adapter.toy.world import GUIDANCE_SCALE, SAMPLING_STEPS, shipped_world

    torch.set_num_threads(args.threads)
    world = shipped_world()
    pipe = load_pipeline(str(world.base), "cpu", torch.float32)
    adapter = IQAAdapter.from_pretrained(world.named_adapter(args.adapter))
    specs = demo_metric_specs(world)
    metrics = score_columns({name: specs[name] for name in adapter.metric_names})
    prompts = [
        Prompt(
            scene_for(9000, index, kind="single", full_caption=True).caption,
            index,
            metadata={"toy_scene": {"seed": 9000, "index": index}},
        )
        for index in range(args.prompts)
    ]
    targets = args.levels.split(",")
    levels = quality_levels(dict.fromkeys(adapter.metric_names, targets))
    settings = {
        "seeds": args.seeds,
        "steps": args.steps or SAMPLING_STEPS,
        "guidance": GUIDANCE_SCALE,
        "batch_size": 32,
        "chunk_size": 16,
    }
    print(
        f"toy world, {args.prompts} prompts x {args.seeds} seeds x {len(levels)} levels, {settings['steps']} steps, "
        f"{args.threads} thread(s), adapter {args.adapter}, metrics {', '.join(adapter.metric_names)}"
    )
    print(
        f"{'layout':>10s} {'pairs':>6s} {'images':>6s} {'seconds':>8s} {'pairs/s':>8s} {'images/s':>8s} {'kept':>6s}"
        "  drop reasons"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for layout in args.layouts.split(","):
            content_filter = ContentFilter(following_scorer=ToyCaptionScorer() if args.readers else None)
            started = time.perf_counter()
            summary = make_pairs(
                pipe,
                adapter,
                prompts,
                Path(scratch) / layout,
                high=dict.fromkeys(adapter.metric_names, "p99"),
                levels=levels,
                metrics=metrics,
                settings=PairSettings(layout=layout, **settings),
                content_filter=content_filter,
                progress=False,
            )
            seconds = time.perf_counter() - started
            images = args.prompts * args.seeds * (1 + len(levels))
            print(
                f"{layout:>10s} {summary['made']:6d} {images:6d} {seconds:8.1f} {summary['made'] / seconds:8.2f} "
                f"{images / seconds:8.2f} {summary['kept_share']:6.0%}  {summary['drop_reasons']}"
            )


if __name__ == "__main__":
    main()
