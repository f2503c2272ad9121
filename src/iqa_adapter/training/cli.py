"""``iqa-adapter train`` and ``iqa-adapter cache``."""

from __future__ import annotations

import argparse

from ..runtime import add_threads_option
from ..toy.world import is_toy_world_model
from ..validation import fraction, non_negative_int, non_negative_number, positive_int, positive_number, seed


def _set_up_runtime(args) -> None:
    """Torch threads for the base model and its data loaders; loading bars hidden with ``--no-progress``."""
    from ..runtime import apply_threads, hide_loading_bars

    apply_threads(args.threads, toy=is_toy_world_model(args.base), workers=args.workers)
    if args.no_progress:
        hide_loading_bars()


def cmd_train(args) -> None:
    from .config import TrainConfig, input_path, output_path
    from .trainer import train

    _set_up_runtime(args)
    config = TrainConfig(
        base=input_path(args.base),
        data=input_path(args.data),
        scores=input_path(args.scores),
        metrics=[name.strip() for name in (args.metrics or "").split(",") if name.strip()],
        reference_features=args.reference_features,
        out=output_path(args.out),
        num_tokens=args.num_tokens,
        projection=args.projection,
        encoding_frequencies=args.encoding_frequencies,
        flag_feature=not args.no_flag,
        init_adapter=input_path(args.init_adapter),
        stats_from=args.stats_from,
        default_target=args.default_target,
        resolution=args.resolution,
        crop=args.crop,
        flip=args.flip,
        cache_dir=output_path(args.cache_dir),
        cache_dtype=args.cache_dtype,
        num_workers=args.workers,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_epsilon=args.adam_epsilon,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm or None,
        train_scale=args.train_scale,
        ema_decay=args.ema_decay,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        drop_quality=args.drop_quality,
        drop_text=args.drop_text,
        drop_both=args.drop_both,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        checkpoints_total_limit=args.checkpoints_total_limit,
        resume=args.resume,
        log_every=args.log_every,
        validation_every=args.validation_every,
        validation_prompts=args.validation_prompt,
        validation_steps=args.validation_steps,
        progress=not args.no_progress,
    )
    train(config)


def cmd_cache(args) -> None:
    from .cache import precompute_cache
    from .config import input_path, output_path

    _set_up_runtime(args)
    cache_dir = precompute_cache(
        input_path(args.base),
        input_path(args.data),
        output_path(args.cache_dir),
        resolution=args.resolution,
        dtype=args.cache_dtype,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    print(f"cache ready in {cache_dir}; train with --cache-dir {cache_dir}")


def add_commands(commands) -> None:
    """Register ``train`` and ``cache``."""
    parser = commands.add_parser(
        "train",
        help="train an IQA-Adapter on a frozen SD 1.x/2.x or SDXL base",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Adapter-only training (projection + per-layer quality K/V) with the denoising loss. Resumable "
        "(--resume latest), multi-GPU / multi-node with `accelerate launch -m iqa_adapter train ...`.",
    )
    parser.add_argument("--base", required=True, help="diffusers model folder or hub id (SD 1.x/2.x, SDXL)")
    parser.add_argument("--data", required=True, help="dataset in any format `annotate` reads")
    parser.add_argument("--scores", default=None, help="scores.parquet from `iqa-adapter annotate` (or its folder)")
    parser.add_argument("--metrics", default=None, help="comma-separated score columns to condition on, in order")
    parser.add_argument(
        "--reference-features",
        default=None,
        metavar="METRIC:LAYERS",
        help="train a reference-based adapter on these activations of each training image, e.g. "
        "loda:checkpoints/loda:distortion_tokens (instead of --scores and --metrics)",
    )
    parser.add_argument("--out", required=True, help="run folder: checkpoints, logs, validation grids, adapter/")
    group = parser.add_argument_group("adapter")
    group.add_argument("--num-tokens", type=positive_int, default=2)
    group.add_argument("--projection", default="linear", choices=["linear", "mlp"])
    group.add_argument(
        "--encoding-frequencies", type=non_negative_int, default=0, help="L of the sinusoidal score encoding (0: off)"
    )
    group.add_argument("--no-flag", action="store_true", help="no constant flag feature beside the scores")
    group.add_argument("--init-adapter", default=None, help="start from this adapter (second stage of the paper)")
    group.add_argument(
        "--default-target",
        default=None,
        metavar="TARGET",
        help="store TARGET (e.g. p50) as the target of every metric a generate call does not name "
        "(default: every metric must be named)",
    )
    group.add_argument(
        "--stats-from",
        default="data",
        choices=["data", "init"],
        help="normalise with this dataset's statistics, or keep those of --init-adapter",
    )
    group = parser.add_argument_group("data")
    group.add_argument("--resolution", type=positive_int, default=512)
    group.add_argument("--crop", default="center", choices=["center", "random"])
    group.add_argument("--flip", action="store_true", help="random horizontal flips (not for position-aware captions)")
    group.add_argument(
        "--cache-dir", default=None, help="precompute VAE latents and text embeddings here once, reuse them"
    )
    group.add_argument("--cache-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    group.add_argument("--workers", type=non_negative_int, default=2, help="data-loader processes")
    group = parser.add_argument_group("optimisation")
    group.add_argument("--batch-size", type=positive_int, default=16, help="per process")
    group.add_argument("--gradient-accumulation", type=positive_int, default=1)
    group.add_argument("--max-steps", type=positive_int, default=1000)
    group.add_argument("--learning-rate", type=positive_number, default=1e-4)
    group.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine", "linear"])
    group.add_argument("--warmup-steps", type=non_negative_int, default=0)
    group.add_argument("--adam-beta1", type=fraction, default=0.9)
    group.add_argument("--adam-beta2", type=fraction, default=0.999)
    group.add_argument("--adam-epsilon", type=positive_number, default=1e-8)
    group.add_argument("--weight-decay", type=non_negative_number, default=1e-2)
    group.add_argument(
        "--max-grad-norm",
        type=non_negative_number,
        default=0.0,
        help="clip gradients to this norm (0: no clipping, as the official code)",
    )
    group.add_argument(
        "--train-scale",
        type=positive_number,
        default=1.0,
        help="adapter scale lambda while training (the official code's 1.0; stored in config.json; "
        "generation uses the adapter's default scale, 0.5)",
    )
    group.add_argument("--ema-decay", type=fraction, default=None, help="keep an EMA of the adapter (e.g. 0.999)")
    group.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    group.add_argument("--gradient-checkpointing", action="store_true")
    group.add_argument(
        "--drop-quality", type=fraction, default=0.01, help="rate of dropping the quality condition only"
    )
    group.add_argument("--drop-text", type=fraction, default=0.05, help="rate of dropping the caption only")
    group.add_argument("--drop-both", type=fraction, default=0.01, help="rate of dropping both")
    group.add_argument("--seed", type=seed, default=0)
    group = parser.add_argument_group("checkpoints and logs")
    group.add_argument("--checkpoint-every", type=positive_int, default=500)
    group.add_argument(
        "--checkpoints-total-limit", type=non_negative_int, default=3, help="keep this many newest checkpoints (0: all)"
    )
    group.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    group.add_argument("--log-every", type=positive_int, default=10)
    group.add_argument(
        "--validation-every", type=non_negative_int, default=0, help="steps between validation grids (0: never)"
    )
    group.add_argument("--validation-prompt", action="append", default=[], help="repeatable")
    group.add_argument("--validation-steps", type=positive_int, default=20)
    group.add_argument("--no-progress", action="store_true")
    add_threads_option(group)
    parser.set_defaults(func=cmd_train)
    cache = commands.add_parser(
        "cache",
        help="precompute the VAE latents and text embeddings of a dataset for `train --cache-dir`",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Encode every image and caption of --data once with the frozen base model, as `train "
        "--cache-dir` does on its first run; later runs with the same base, data and resolution read it, whatever "
        "they condition on. Resumable: run it again after an interruption.",
    )
    cache.add_argument("--base", required=True, help="diffusers model folder or hub id (SD 1.x/2.x, SDXL)")
    cache.add_argument("--data", required=True, help="dataset in any format `annotate` reads")
    cache.add_argument("--cache-dir", required=True, help="the cache folder (give the same to `train --cache-dir`)")
    cache.add_argument("--resolution", type=positive_int, default=512)
    cache.add_argument("--cache-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    cache.add_argument("--workers", type=non_negative_int, default=2, help="data-loader processes")
    cache.add_argument("--no-progress", action="store_true")
    add_threads_option(cache)
    cache.set_defaults(func=cmd_cache)
