"""Toy base model: the cost of a UNet training step with 8 attention heads (worlds 1-4) and with 2 (world 5),
measured side by side in one run.

The toy UNet's cross- and self-attention layers have 32 to 64 channels. diffusers' ``attention_head_dim`` is the
number of heads, so 8 heads meant heads of 4 to 8 channels, and PyTorch's CPU attention kernel spends most of its
time on the softmax of every head: half of a training step went to attention. The script times, for each head
count, a training step of the base model (UNet and text encoder, forward and backward, batch 32) and an adapter-like
step (frozen UNet, gradients to the text states only, as an IQA-Adapter's training sees it), rounds interleaved so
that machine load affects both alike; medians reported.

    python benchmarks/bench_toy_attention_heads.py                  # 2 threads, as the world build's base step
    python benchmarks/bench_toy_attention_heads.py --threads 1      # as a one-thread lane
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from iqa_adapter.toy.base_model import ToyBaseConfig, build_text_encoder, build_unet
from iqa_adapter.toy.tokenizer import toy_tokenizer
from iqa_adapter.validation import positive_int


def head_counts(text: str) -> list[int]:
    """``--heads``: comma-separated positive head counts."""
    return [positive_int(value.strip()) for value in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=head_counts, default="8,2", help="comma-separated head counts to compare")
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--steps", type=positive_int, default=3, help="steps timed per round and head count")
    parser.add_argument("--threads", type=positive_int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = toy_tokenizer()
    generator = torch.Generator().manual_seed(0)
    base = ToyBaseConfig()
    latents = torch.randn(args.batch, base.latent_channels, base.size // 2, base.size // 2, generator=generator)
    timesteps = torch.randint(1000, (args.batch,), generator=generator)
    ids = torch.randint(0, len(tokenizer), (args.batch, tokenizer.model_max_length), generator=generator)

    models = {}
    for heads in args.heads:
        config = dataclasses.replace(base, attention_heads=heads)
        models[heads] = (build_unet(config), build_text_encoder(config, tokenizer))

    def base_step(unet, text_encoder) -> None:
        unet.requires_grad_(True)
        text_encoder.requires_grad_(True)
        unet.zero_grad(set_to_none=True)
        text_encoder.zero_grad(set_to_none=True)
        unet(latents, timesteps, text_encoder(ids).last_hidden_state).sample.pow(2).mean().backward()

    def adapter_step(unet, text_encoder) -> None:
        unet.requires_grad_(False)
        with torch.no_grad():
            states = text_encoder(ids).last_hidden_state
        states.requires_grad_(True)
        unet(latents, timesteps, states).sample.pow(2).mean().backward()

    times: dict[tuple[str, int], list[float]] = {}
    for kind, step in (("base training step", base_step), ("adapter-like step", adapter_step)):
        for unet, text_encoder in models.values():
            step(unet, text_encoder)  # warm-up
        for _ in range(args.rounds):
            for heads, (unet, text_encoder) in models.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(unet, text_encoder)
                times.setdefault((kind, heads), []).append((time.perf_counter() - start) / args.steps)

    print(
        f"toy UNet, batch {args.batch}, {args.threads} thread(s), median of {args.rounds} rounds x {args.steps} steps"
    )
    reference = max(models)
    for kind in ("base training step", "adapter-like step"):
        medians = {heads: statistics.median(times[(kind, heads)]) for heads in models}
        for heads, seconds in medians.items():
            print(
                f"  {kind:20s} {heads} heads: {seconds:.3f} s  ({medians[reference] / seconds:.2f}x {reference} heads)"
            )


if __name__ == "__main__":
    main()
