"""Memory and time of one IQA-gradient guidance step, with the options that make it practical, side by side.

One guided step decodes the latent with the VAE decoder and back-propagates the metric's log-score to the
latent. This script measures that step alone (the UNet's cost is the same with and without guidance) for
the full SD / SDXL VAE decoder (random weights, built from its config) in four configurations:

* ``plain decode``: decoding without gradients (what an unguided step never does; the floor);
* ``guided``: decoding and back-propagation, no checkpointing;
* ``guided + checkpointing``: gradient checkpointing through the decoder's blocks;
* ``guided + checkpointing + half-size decode``: the latent downsampled by 2 before decoding.

Each configuration runs in its own subprocess; peak memory is the peak of allocated CUDA memory on a GPU,
else the process's maximum resident set size minus the resident size before the step.

    python benchmarks/bench_guidance.py                              # 32x32 latents (256 px) on CPU
    python benchmarks/bench_guidance.py --latent 128 --dtype fp16    # 1024 px (SDXL) on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from child_process import run_child

CONFIGURATIONS = {
    "plain decode": dict(grad=False, checkpointing=False, decode_scale=1.0),
    "guided": dict(grad=True, checkpointing=False, decode_scale=1.0),
    "guided + checkpointing": dict(grad=True, checkpointing=True, decode_scale=1.0),
    "guided + checkpointing + half-size decode": dict(grad=True, checkpointing=True, decode_scale=0.5),
}


def child(settings: dict) -> None:
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, DDIMScheduler

    from iqa_adapter.architectures import FULL_VAE
    from iqa_adapter.guidance import IQAGuidance
    from iqa_adapter.metrics import create_metric

    device = torch.device(settings["device"])
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[settings["dtype"]]
    torch.manual_seed(0)
    vae = AutoencoderKL(**FULL_VAE).to(device, dtype).eval().requires_grad_(False)
    pipe = SimpleNamespace(vae=vae, scheduler=DDIMScheduler())
    metric = create_metric(settings["metric"], device=device)
    guidance = IQAGuidance(
        metric, alpha=30.0, decode_scale=settings["decode_scale"], checkpointing=settings["checkpointing"]
    )
    latents = torch.randn(settings["batch"], 4, settings["latent"], settings["latent"], device=device, dtype=dtype)
    if settings["checkpointing"]:
        vae.enable_gradient_checkpointing()
    times = []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    for _ in range(settings["repeats"]):
        start = time.perf_counter()
        if settings["grad"]:
            guidance._gradient(pipe, latents)
        else:
            with torch.no_grad():
                vae.decode(latents / vae.config.scaling_factor)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (
        (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
        if device.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    )
    print(json.dumps({"seconds": statistics.median(times), "peak_mb": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, default=32, help="latent side (image side = 8x)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--metric", default="sharpness", help="a differentiable metric")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    print(
        f"one guidance step through the SD/SDXL VAE decoder: {args.batch} x {8 * args.latent} px, {args.metric}, "
        f"{args.device}, {args.dtype}"
    )
    figures = {}
    for name, options in CONFIGURATIONS.items():
        settings = {**vars(args), **options}
        settings.pop("child")
        figures[name] = run_child(__file__, name, settings)
        print(f"  {name:42s} {figures[name]['seconds']:7.2f} s  peak +{figures[name]['peak_mb']:8.0f} MB")
    full, lean = figures["guided"], figures["guided + checkpointing + half-size decode"]
    print(
        f"checkpointing + half-size decoding: {full['peak_mb'] / max(lean['peak_mb'], 1):.1f}x less memory than "
        f"plain guidance, at {lean['seconds'] / full['seconds']:.2f}x its time"
    )


if __name__ == "__main__":
    main()
