"""``iqa-adapter toy make-data | train-base | evaluate-base``: the toy world's data and base model."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..io_utils import read_json
from ..runtime import add_threads_option, apply_threads
from ..validation import fraction, non_negative_number, positive_int, seed
from .data import TRAINING_CLEAN_FRACTION
from .world import GUIDANCE_SCALE, SAMPLING_STEPS


def cmd_make_data(args) -> None:
    from .data import write_toy_dataset

    out = write_toy_dataset(
        args.out,
        args.num_images,
        seed=args.seed,
        size=args.size,
        distort=not args.no_distort,
        **({} if args.clean_fraction is None else {"clean_fraction": args.clean_fraction}),
        format=args.format,
        shard_size=args.shard_size,
    )
    print(f"toy dataset: {args.num_images} images in {out}")


def _config(args):
    from .base_model import ToyBaseConfig

    config = ToyBaseConfig.from_dict(read_json(args.config, "--config")) if args.config else ToyBaseConfig()
    overrides = dict(vae_steps=args.vae_steps, unet_steps=args.unet_steps, seed=args.seed)
    if args.frozen_text_encoder:
        overrides["train_text_encoder"] = False
    return dataclasses.replace(config, **{key: value for key, value in overrides.items() if value is not None})


def cmd_train_base(args) -> None:
    from .base_model import PIPELINE_DIR, train_base_model
    from .data import load_images

    apply_threads(args.threads, toy=True)
    config = _config(args)
    images, captions = load_images(args.data, size=config.size)
    train_base_model(images, captions, args.out, config, checkpoint_every=args.checkpoint_every)
    print(f"toy base model: {Path(args.out) / PIPELINE_DIR}")


def cmd_evaluate_base(args) -> None:
    from ..io_utils import write_json
    from .base_model import load_toy_pipeline
    from .evaluation import caption_following_report, sample_grid, vae_psnr

    apply_threads(args.threads, toy=True)
    pipe = load_toy_pipeline(args.pipeline)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    report = dict(
        pipeline=str(args.pipeline),
        vae_psnr=vae_psnr(pipe.vae, size, args.vae_images),
        caption_following=caption_following_report(pipe, args.count, args.steps, args.guidance),
    )
    sample_grid(pipe, seeds=range(args.seeds), steps=args.steps, guidance=args.guidance).save(out / "grid.png")
    write_json(out / "report.json", report)
    generated = report["caption_following"]["generated"]
    print(f"VAE PSNR: clean {report['vae_psnr']['clean']:.1f} dB, distorted {report['vae_psnr']['distorted']:.1f} dB")
    for attribute, accuracy in generated["accuracy"].items():
        print(
            f"{attribute}: {accuracy:.1%} of {generated['images']} images match their prompt "
            f"(chance {generated['chance'][attribute]:.1%})"
        )
    print(f"grid {out / 'grid.png'}, report {out / 'report.json'}")


def add_commands(commands) -> None:
    """Register ``toy`` and its subcommands."""
    toy = commands.add_parser("toy", help="build the toy world: data and base model")
    subcommands = toy.add_subparsers(dest="toy_command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    data = subcommands.add_parser(
        "make-data", help="render captioned toy images, degraded at random", formatter_class=defaults
    )
    data.add_argument("--out", required=True, help="output folder")
    data.add_argument("--num-images", type=positive_int, default=20000)
    data.add_argument("--seed", type=seed, default=0)
    data.add_argument("--size", type=positive_int, default=32, help="image side in pixels")
    data.add_argument(
        "--clean-fraction",
        type=fraction,
        default=None,
        help=f"fraction of images left undegraded (default: the toy world's, {TRAINING_CLEAN_FRACTION})",
    )
    data.add_argument("--no-distort", action="store_true", help="keep every image clean")
    data.add_argument(
        "--format",
        default="folder",
        choices=["folder", "shards"],
        help="PNG + .txt + .json files, or webdataset .tar shards",
    )
    data.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard")
    data.set_defaults(func=cmd_make_data)

    train = subcommands.add_parser(
        "train-base", help="train the toy base pipeline (VAE, then UNet + text encoder)", formatter_class=defaults
    )
    train.add_argument("--data", required=True, help="dataset in any format `annotate` reads")
    train.add_argument("--out", required=True, help="run folder: pipeline/, training/ checkpoints; resumes from them")
    train.add_argument("--config", default=None, help="JSON file of ToyBaseConfig fields (default: the built-in)")
    train.add_argument("--vae-steps", type=positive_int, default=None, help="override the config's VAE steps")
    train.add_argument("--unet-steps", type=positive_int, default=None, help="override the config's UNet steps")
    train.add_argument("--seed", type=seed, default=None, help="override the config's seed")
    train.add_argument("--frozen-text-encoder", action="store_true", help="keep the random text encoder frozen")
    train.add_argument("--checkpoint-every", type=positive_int, default=250, help="steps between checkpoints")
    add_threads_option(train)
    train.set_defaults(func=cmd_train_base)

    evaluate = subcommands.add_parser(
        "evaluate-base", help="VAE PSNR, caption following and a sample grid", formatter_class=defaults
    )
    evaluate.add_argument("--pipeline", required=True, help="toy pipeline folder")
    evaluate.add_argument("--out", required=True, help="folder for report.json and grid.png")
    evaluate.add_argument("--count", type=positive_int, default=200, help="prompts for the caption-following check")
    evaluate.add_argument(
        "--vae-images", type=positive_int, default=128, help="images per distortion family for the VAE PSNR"
    )
    evaluate.add_argument("--seeds", type=positive_int, default=6, help="grid columns (one seed each)")
    evaluate.add_argument("--steps", type=positive_int, default=SAMPLING_STEPS)
    evaluate.add_argument("--guidance", type=non_negative_number, default=GUIDANCE_SCALE)
    add_threads_option(evaluate)
    evaluate.set_defaults(func=cmd_evaluate_base)
