"""Evaluation throughput and peak memory against the number of images, on the embedded toy world.

`iqa-adapter evaluate` streams every image to disk as it is made and scores chunk by chunk, so its memory
should stay flat as the number of prompts grows while the time grows linearly. Each size runs in a fresh
process (peak RSS of that process) and a fresh output folder; the script prints images/s for generation and
for scoring and the peak RSS, and the ratio of the largest run's memory to the smallest's.

    python benchmarks/bench_evaluate.py                          # 4, 16 and 64 prompts x 2 seeds
    python benchmarks/bench_evaluate.py --prompts 8,32,128 --seeds 4 --threads 2
    python benchmarks/bench_evaluate.py --arch sdxl --device cuda --prompts 4 --seeds 1   # the GPU suite's row

With ``--arch sdxl`` (or ``sd15``, or ``tiny`` for a smoke run) the model is the full architecture with random
weights (nothing is downloaded; the images are noise) and an untrained adapter on two CC3M metrics, generated at
``--resolution`` with ``--steps`` as the RelGain rows are (base, p1, p99); the built-in metrics score on the CPU.
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

    from iqa_adapter import cc3m_stats
    from iqa_adapter.adapter import IQAAdapter
    from iqa_adapter.annotate import metric_columns
    from iqa_adapter.architectures import full_size_pipeline, tiny_sdxl_pipeline
    from iqa_adapter.evaluation import EvaluationSettings, Measures, evaluate
    from iqa_adapter.evaluation.passes import ScoreColumn, score_columns
    from iqa_adapter.pipelines import load_pipeline
    from iqa_adapter.toy.scenes import scene_for
    from iqa_adapter.toy.world import GUIDANCE_SCALE, SAMPLING_STEPS, shipped_world

    torch.set_num_threads(settings["threads"])
    arch = settings["arch"]
    if arch == "toy":
        world = shipped_world()
        prompts = [
            scene_for(7000, index, kind="single", full_caption=True).caption for index in range(settings["prompts"])
        ]
        adapters = {"toy": IQAAdapter.from_pretrained(world.adapter)}
        evaluation = EvaluationSettings(
            seeds=settings["seeds"], steps=SAMPLING_STEPS, guidance=GUIDANCE_SCALE, batch_size=32, chunk_size=64
        )

        def timed_pipeline():
            return load_pipeline(str(world.base), "cpu", torch.float32)
    else:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[settings["dtype"]]
        device = torch.device(settings["device"])
        if arch == "tiny":
            pipe = tiny_sdxl_pipeline(seed=0).to(device=device, dtype=dtype)
        else:
            pipe = full_size_pipeline(arch, device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        stats = cc3m_stats()
        adapters = {"random": IQAAdapter.for_unet(pipe, [stats["topiq_nr"], stats["laion_aes"]], seed=0)}
        prompts = [f"a photograph number {index}" for index in range(settings["prompts"])]
        evaluation = EvaluationSettings(
            seeds=settings["seeds"],
            steps=settings["steps"],
            height=settings["resolution"],
            width=settings["resolution"],
            relgain_only=("random",),
            negative_quality=None,
            batch_size=4,
            chunk_size=16,
        )

        def timed_pipeline():
            return pipe

    metrics = score_columns({column: (name, {}) for column, name in metric_columns(METRICS.split(",")).items()})
    out = Path(settings["out"])
    timings = {}
    started = time.perf_counter()
    report = evaluate(
        out,
        load_pipeline=timed_pipeline,
        base_name=arch,
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
        base_name=arch,
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
    parser.add_argument("--arch", default="toy", choices=["toy", "sdxl", "sd15", "tiny"])
    parser.add_argument("--device", default="cpu", help="for --arch sdxl/sd15/tiny")
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="default: fp16 on CUDA")
    parser.add_argument("--resolution", type=int, default=1024, help="for --arch sdxl/sd15/tiny")
    parser.add_argument("--steps", type=int, default=35, help="for --arch sdxl/sd15/tiny")
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
                "arch": args.arch,
                "device": args.device,
                "dtype": args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32"),
                "resolution": args.resolution,
                "steps": args.steps,
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
