"""Generation throughput with the adapter, with and without ``torch.compile`` of the UNet, in one run.

The full SDXL (or SD 1.5) architecture with random weights (nothing is downloaded; the images are noise), an
adapter on two CC3M metrics attached, ``generate`` with one quality vector per image. Each configuration makes
``--images`` images after one warm-up call (which, for the compiled UNet, includes the compilation, reported
apart). Also the base model alone, so the ratio adapter / base is measured on the same machine in the same run.

    python benchmarks/bench_generation.py --device cuda --dtype fp16            # SDXL 1024 px, 35 steps
    python benchmarks/bench_generation.py --arch tiny --resolution 64 --steps 2  # a smoke run on a CPU
"""

from __future__ import annotations

import argparse
import time

import torch

from iqa_adapter import IQAAdapter, cc3m_stats
from iqa_adapter.architectures import full_size_pipeline, tiny_sdxl_pipeline
from iqa_adapter.generation import generate

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def images_per_second(pipe, adapter, args, device) -> tuple[float, float]:
    """(seconds of the warm-up call, images per second over the timed calls)."""
    prompts = [f"a photograph number {index}" for index in range(args.batch)]
    qualities = None if adapter is None else {"topiq_nr": "p99", "laion_aes": "p99"}
    call = dict(
        steps=args.steps,
        guidance=7.5,
        height=args.resolution,
        width=args.resolution,
        progress=False,
        batch_size=args.batch,
        output_type="latent",
    )
    synchronise(device)
    start = time.perf_counter()
    generate(pipe, adapter, prompts, qualities, **call)
    synchronise(device)
    warm_up = time.perf_counter() - start
    made, start = 0, time.perf_counter()
    while made < args.images:
        generate(pipe, adapter, prompts, qualities, seed=made, **call)
        made += len(prompts)
    synchronise(device)
    return warm_up, made / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sdxl", choices=["sdxl", "sd15", "tiny"])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--batch", type=int, default=4, help="images per pipeline call")
    parser.add_argument("--images", type=int, default=8, help="images timed per configuration")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile configurations")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    if args.arch == "tiny":
        pipe = tiny_sdxl_pipeline(seed=0).to(device=device, dtype=dtype)
    else:
        pipe = full_size_pipeline(args.arch, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    stats = cc3m_stats()
    adapter = IQAAdapter.for_unet(pipe, [stats["topiq_nr"], stats["laion_aes"]], seed=0)
    print(f"{args.arch}, {args.resolution} px, {args.steps} steps, batch {args.batch}, {device} {dtype}")
    results = {}
    for compiled in (False, True) if not args.no_compile else (False,):
        if compiled:
            pipe.unet = torch.compile(pipe.unet)
        for name in ("base", "adapter"):
            if name == "adapter":
                adapter.attach(pipe)  # once, before the warm-up: attaching changes the compiled graph
            warm_up, rate = images_per_second(pipe, adapter if name == "adapter" else None, args, device)
            if name == "adapter":
                adapter.detach()
            label = f"{name}{' + torch.compile' if compiled else ''}"
            results[label] = rate
            print(f"{label:26s} {rate:8.3f} images/s   (first call {warm_up:.1f} s)", flush=True)
    print(f"adapter / base: {results['adapter'] / results['base']:.3f}")
    if "adapter + torch.compile" in results:
        print(
            f"torch.compile speed-up with the adapter: {results['adapter + torch.compile'] / results['adapter']:.2f}x"
        )


if __name__ == "__main__":
    main()
