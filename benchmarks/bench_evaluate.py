"""Evaluation throughput and peak memory against the number of images, on the embedded toy world.

`iqa-adapter evaluate` streams every image to disk as it is made and scores chunk by chunk, so its memory
should stay flat as the number of prompts grows while the time grows linearly. Each size runs in a fresh
process (peak RSS of that process) and a fresh output folder; the script prints images/s for generation and
for scoring and the peak RSS, and the ratio of the largest run's memory to the smallest's.

    python benchmarks/bench_evaluate.py                          # 4, 16 and 64 prompts x 2 seeds
    python benchmarks/bench_evaluate.py --prompts 8,32,128 --seeds 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from child_process import run_child

METRICS = "piqe,sharpness,noise,colorfulness"


def child(settings: dict) -> dict:
    """One evaluation in this process: images/s of each pass and the peak RSS."""
    import torch

    from iqa_adapter.adapter import IQAAdapter
    from iqa_adapter.annotate import metric_columns
    from iqa_adapter.evaluation import EvaluationSettings, Measures, evaluate
    from iqa_adapter.evaluation.passes import ScoreColumn
    from iqa_adapter.metrics import create_metric
    from iqa_adapter.pipelines import load_pipeline
    from iqa_adapter.toy.scenes import scene_for
    from iqa_adapter.toy.world import GUIDANCE_SCALE, SAMPLING_STEPS, shipped_world

    torch.set_num_threads(settings["threads"])
    world = shipped_world()
    prompts = [scene_for(7000, index, kind="single", full_caption=True).caption for index in range(settings["prompts"])]
    metrics = [
        ScoreColumn(column, create_metric(name).eval(), {"name": name})
        for column, name in metric_columns(METRICS.split(",")).items()
    ]
    out = Path(settings["out"])
    timings = {}

    def timed_pipeline():
        return load_pipeline(str(world.base), "cpu", torch.float32)

    evaluation = EvaluationSettings(
        seeds=settings["seeds"], steps=SAMPLING_STEPS, guidance=GUIDANCE_SCALE, batch_size=32, chunk_size=64
    )
    adapters = {"toy": IQAAdapter.from_pretrained(world.adapter)}
    started = time.perf_counter()
    report = evaluate(
        out,
        load_pipeline=timed_pipeline,
        base_name="toy",
        adapters=adapters,
        metrics=metrics,
        prompts=prompts,
        settings=evaluation,
        measures=Measures(distances=("ssim",)),
        progress=False,
    )
    timings["total"] = time.perf_counter() - started
    # scoring alone: the same images scored again by new columns
    rescore = [ScoreColumn(f"again_{column.name}", column.metric, {**column.spec, "again": True}) for column in metrics]
    started = time.perf_counter()
    evaluate(
        out,
        load_pipeline=timed_pipeline,
        base_name="toy",
        adapters=adapters,
        metrics=rescore,
        prompts=prompts,
        settings=evaluation,
        measures=Measures(distances=()),
        skip_generation=True,
        progress=False,
    )
    timings["scoring"] = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "images": report["n_images"],
        "total_s": timings["total"],
        "scoring_s": timings["scoring"],
        "peak_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", default="4,16,64", help="comma-separated prompt counts")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for count in [int(value) for value in args.prompts.split(",")]:
            settings = {
                "prompts": count,
                "seeds": args.seeds,
                "threads": args.threads,
                "out": str(Path(scratch) / f"eval_{count}"),
            }
            rows.append({"prompts": count, **run_child(__file__, f"{count} prompts", settings)})
    print(
        f"{'prompts':>7s} {'images':>7s} {'total s':>8s} {'images/s':>9s} {'scoring s':>9s} {'scored/s':>9s} "
        f"{'peak MB':>8s}"
    )
    for row in rows:
        print(
            f"{row['prompts']:7d} {row['images']:7d} {row['total_s']:8.1f} {row['images'] / row['total_s']:9.1f} "
            f"{row['scoring_s']:9.1f} {row['images'] / row['scoring_s']:9.1f} {row['peak_mb']:8.0f}"
        )
    print(
        f"images x{rows[-1]['images'] / rows[0]['images']:.0f}: time x{rows[-1]['total_s'] / rows[0]['total_s']:.1f}, "
        f"peak memory x{rows[-1]['peak_mb'] / rows[0]['peak_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
