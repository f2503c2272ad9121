"""Per-UNet-step cost of the IQA-Adapter against the base model, measured side by side in one run.

Full-size UNet architecture built from its config with random weights (no download). Base and adapter
steps are interleaved round by round (attach / detach between them), so machine load affects both alike.
Also compares negative quality guidance (-k*q in the unconditional half) with plain CFG (dropped
condition): both run the same batch of 2, so they should cost the same.

Whole-step timings on a busy CPU vary by several per cent between identical runs, more than the adapter
costs, so the script also reports two finer figures: the FLOPs of one step counted on the meta device
(exact), and the cost of the cross-attention layers alone, each layer timed with diffusers' plain processor
and with the adapter's processor on the inputs it really receives, many times, interleaved.

    python benchmarks/bench_unet_overhead.py                      # SDXL, 64x64 latents on CPU
    python benchmarks/bench_unet_overhead.py --latent 128 --device cuda --dtype fp16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from iqa_adapter import IQAAdapter, cc3m_stats
from iqa_adapter.architectures import unet_from_config


def unet_inputs(unet, batch: int, latent: int, device, dtype) -> dict:
    width = unet.config.cross_attention_dim
    inputs = {
        "sample": torch.randn(batch, 4, latent, latent, device=device, dtype=dtype),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": torch.randn(batch, 77, width, device=device, dtype=dtype),
    }
    if unet.config.addition_embed_type == "text_time":
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 1280, device=device, dtype=dtype),
            "time_ids": torch.tensor(
                [[8 * latent, 8 * latent, 0, 0, 8 * latent, 8 * latent]] * batch, device=device, dtype=dtype
            ),
        }
    else:
        inputs["added_cond_kwargs"] = {}
    return inputs


def with_quality(inputs: dict, embeds: list[torch.Tensor]) -> dict:
    return {**inputs, "added_cond_kwargs": {**inputs["added_cond_kwargs"], "image_embeds": embeds}}


@torch.inference_mode()
def timed(unet, inputs: dict, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    unet(**inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def flop_overhead(arch: str, latent: int) -> tuple[float, float]:
    """(base, adapter) FLOPs of one UNet step, counted on the meta device: exact and instant."""
    unet = unet_from_config(arch, device="meta")
    stats = cc3m_stats()
    with torch.device("meta"):
        adapter = IQAAdapter.for_unet(unet, [stats["topiq_nr"], stats["laion_aes"]])
    inputs = unet_inputs(unet, 1, latent, torch.device("meta"), torch.float32)
    z = adapter.z_scores({"topiq_nr": "p99", "laion_aes": "p99"})
    counts = []
    for attached in (False, True):
        if attached:
            adapter.attach(unet, scale=0.5)
            inputs = with_quality(inputs, adapter.embeds(z, do_classifier_free_guidance=False))
        with FlopCounterMode(display=False) as counter:
            unet(**inputs)
        counts.append(counter.get_total_flops())
    adapter.detach()
    return counts[0], counts[1]


@torch.inference_mode()
def attention_overhead(
    unet, adapter: IQAAdapter, plain_processors: dict, inputs: dict, embeds, device, repeats: int
) -> tuple[float, float]:
    """(plain, adapter) seconds per UNet step spent in the cross-attention layers, timed layer by layer.

    The adapter must be attached; ``plain_processors`` are the UNet's processors from before. Each distinct
    layer input shape is timed ``repeats`` times with each processor, alternating; the medians are summed
    over the layers of the step.
    """
    inputs = with_quality(inputs, embeds)
    captured: dict[str, tuple] = {}
    hooks = [
        unet.get_submodule(layer.name).register_forward_pre_hook(
            lambda module, args, kwargs, name=layer.name: captured.setdefault(name, (args, kwargs)), with_kwargs=True
        )
        for layer in adapter.config.layers
    ]
    unet(**inputs)
    for hook in hooks:
        hook.remove()
    groups: dict[tuple, list[str]] = {}
    for name, (args, _kwargs) in captured.items():
        groups.setdefault((unet.get_submodule(name).to_k.out_features, tuple(args[0].shape)), []).append(name)
    plain_total = adapter_total = 0.0
    for names in groups.values():
        module = unet.get_submodule(names[0])
        args, kwargs = captured[names[0]]
        text_only = {**kwargs, "encoder_hidden_states": kwargs["encoder_hidden_states"][0]}
        ip_processor, plain_processor = module.processor, plain_processors[f"{names[0]}.processor"]
        plain_times, adapter_times = [], []
        for _ in range(repeats + 1):
            module.set_processor(plain_processor)
            plain_times.append(timed(module, {"hidden_states": args[0], **text_only}, device))
            module.set_processor(ip_processor)
            adapter_times.append(timed(module, {"hidden_states": args[0], **kwargs}, device))
        plain_total += len(names) * statistics.median(plain_times[1:])
        adapter_total += len(names) * statistics.median(adapter_times[1:])
    return plain_total, adapter_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sdxl", choices=["sdxl", "sd15"])
    parser.add_argument("--latent", type=int, default=None, help="latent side (default 64 on CPU, 128 on GPU)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--flops-only", action="store_true", help="only count FLOPs (seconds, no weights)")
    parser.add_argument("--layer-repeats", type=int, default=30, help="timings per cross-attention layer shape")
    args = parser.parse_args()
    for side in (64, 128):
        base_flops, adapter_flops = flop_overhead(args.arch, side)
        print(
            f"FLOPs per UNet step, {args.arch} {side}x{side} latents: base {base_flops / 1e12:.3f} T, "
            f"adapter {adapter_flops / 1e12:.3f} T ({100 * (adapter_flops / base_flops - 1):+.3f} %)"
        )
    if args.flops_only:
        return
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    ]
    latent = args.latent or (128 if device.type == "cuda" else 64)

    print(f"building {args.arch} UNet (random weights) on {device}, {dtype}, latents {latent}x{latent} ...")
    torch.manual_seed(0)
    unet = unet_from_config(args.arch).to(device=device, dtype=dtype).eval()
    stats = cc3m_stats()
    adapter = IQAAdapter.for_unet(unet, [stats["topiq_nr"], stats["laion_aes"]], seed=0)
    adapter_params = sum(p.numel() for p in adapter.parameters())
    print(
        f"UNet {sum(p.numel() for p in unet.parameters()) / 1e9:.2f} B parameters; adapter "
        f"{adapter_params / 1e6:.1f} M ({len(adapter.config.layers)} cross-attention layers)"
    )
    z = adapter.z_scores({"topiq_nr": "p99", "laion_aes": "p99"})

    single = unet_inputs(unet, 1, latent, device, dtype)
    plain_processors = dict(unet.attn_processors)
    adapter.attach(unet, scale=0.5)
    plain_attention, adapter_attention = attention_overhead(
        unet,
        adapter,
        plain_processors,
        single,
        adapter.embeds(z, do_classifier_free_guidance=False),
        device,
        args.layer_repeats,
    )
    adapter.detach()
    pair = unet_inputs(unet, 2, latent, device, dtype)
    times: dict[str, list[float]] = {"base": [], "adapter": [], "cfg_base": [], "cfg_dropped": [], "cfg_negative": []}
    for round_index in range(args.rounds + 1):  # round 0 warms up every path and is discarded
        sample = {}
        # alternate which configuration runs first, so slow drifts of the machine cancel out
        for with_adapter in (False, True) if round_index % 2 else (True, False):
            if not with_adapter:
                sample["base"] = timed(unet, single, device)
                sample["cfg_base"] = timed(unet, pair, device)
                continue
            adapter.attach(unet, scale=0.5)
            sample["adapter"] = timed(
                unet, with_quality(single, adapter.embeds(z, do_classifier_free_guidance=False)), device
            )
            sample["cfg_negative"] = timed(unet, with_quality(pair, adapter.embeds(z, negative_quality=1.0)), device)
            sample["cfg_dropped"] = timed(unet, with_quality(pair, adapter.embeds(z)), device)
            adapter.detach()
        if round_index:
            for key, value in sample.items():
                times[key].append(value)
        print(
            f"round {round_index}{' (warm-up)' if not round_index else ''}: "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in sample.items())
        )

    median = {key: statistics.median(values) for key, values in times.items()}
    print("\nmedian per-UNet-step time:")
    for key, value in median.items():
        print(f"  {key:13s} {value * 1000:9.1f} ms")

    def paired(numerator: str, denominator: str) -> str:
        """Median over rounds of the per-round ratio (both measured within the same round), and its spread."""
        ratios = [100 * (a / b - 1) for a, b in zip(times[numerator], times[denominator])]
        return f"{statistics.median(ratios):+.2f} % (rounds: {', '.join(f'{r:+.1f}' for r in ratios)})"

    extra = adapter_attention - plain_attention
    print(
        f"cross-attention layers per step, batch 1: plain {plain_attention * 1000:.1f} ms, with adapter "
        f"{adapter_attention * 1000:.1f} ms: +{extra * 1000:.1f} ms = {100 * extra / median['base']:+.2f} % of a base step"
    )
    print(f"adapter (lambda=0.5) vs base, batch 1:            {paired('adapter', 'base')}")
    print(f"CFG batch 2, adapter with dropped condition vs base: {paired('cfg_dropped', 'cfg_base')}")
    print(f"negative quality guidance vs plain CFG (adapter):   {paired('cfg_negative', 'cfg_dropped')}")


if __name__ == "__main__":
    main()
