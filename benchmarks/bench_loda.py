"""LoDa throughput: inference crops/s and training samples/s, for the ViT-B/16 + ResNet-50 model and the tiny one.

The base model is built from its configuration with seeded random weights (no download; pretrained weights
run at the same speed). One crop is one 224x224 (base) or 32x32 (tiny) input, so inference images/s under
the paper's test protocol (15 crops per image) is crops/s / 15. A training step is forward, the norm-in-norm
loss, backward into the trained parts (through the frozen ViT, whose activations carry the gradients of the
injectors) and an AdamW step. Each figure is the median over timed rounds, after one warm-up round.

    python benchmarks/bench_loda.py                         # CPU (default: few base rounds, under ~5 min)
    python benchmarks/bench_loda.py --device cuda --base-batch 64 --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from iqa_adapter.loda import build_model, loda_preset
from iqa_adapter.loda.losses import norm_in_norm_loss


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(step, rounds: int, device: torch.device) -> float:
    step()  # warm-up
    times = []
    for _ in range(rounds):
        _synchronize(device)
        started = time.perf_counter()
        step()
        _synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench(preset: str, batch: int, rounds: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Inference crops/s and training samples/s of one preset at one batch size."""
    model = build_model(loda_preset(preset, pretrained=False), seed=0).to(device)
    size = model.crop_size
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator).to(device)
    labels = torch.rand(batch, generator=generator).to(device)

    model.train(False)

    def infer() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(images)

    inference = _median_seconds(infer, rounds, device)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=1e-2)
    model.train()

    def train_step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = norm_in_norm_loss(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    training = _median_seconds(train_step, rounds, device)
    return {
        "preset": preset,
        "batch": batch,
        "parameters": model.parameter_counts(),
        "inference": batch / inference,
        "training": batch / training,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype")
    parser.add_argument("--presets", default="tiny,base")
    parser.add_argument("--base-batch", type=int, default=None, help="default: 4 on CPU, 64 on GPU")
    parser.add_argument("--tiny-batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default: 3 on CPU, 10 on GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    gpu = device.type == "cuda"
    rounds = args.rounds or (10 if gpu else 3)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"LoDa throughput on {name}, {args.dtype}, median of {rounds} rounds")
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        batch = args.tiny_batch if preset == "tiny" else args.base_batch or (64 if gpu else 4)
        result = bench(preset, batch, rounds, device, dtype)
        counts = result["parameters"]
        print(
            f"  {preset:<5} ({counts['trainable']:,} trainable / {counts['total']:,} parameters, batch {batch}): "
            f"inference {result['inference']:.1f} crops/s = {result['inference'] / 15:.2f} images/s at 15 crops; "
            f"training {result['training']:.1f} samples/s"
        )


if __name__ == "__main__":
    main()
