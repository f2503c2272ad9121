"""``iqa-adapter loda ...``: describe, train and test LoDa models, run the paper's split protocol, and make
synthetic IQA datasets.

    iqa-adapter loda info --preset base
    iqa-adapter loda make-dataset --out data/synthetic
    iqa-adapter loda train --meta data/synthetic/meta.csv --preset tiny --random-split 0 --out runs/tiny
    iqa-adapter loda train --meta kadid10k/meta.csv --dataset kadid10k --random-split 0 --out runs/kadid
    iqa-adapter loda eval --checkpoint runs/tiny --meta data/synthetic/meta.csv --random-split 0
    iqa-adapter loda protocol --meta data/synthetic/meta.csv --preset tiny --out runs/protocol

train, eval and protocol first read every image they will use once: images that cannot be read (missing,
empty, truncated, not an image) are skipped, counted, and listed in OUT/skipped.csv.

--dataset NAME (train, protocol) applies the official pre-processing of a dataset of the paper: its resize
before the crops (e.g. the shorter side to 384) and its training crops per image; explicit --resize-short,
--resize, --interpolation and --crops-per-image override it. A checkpoint keeps its resize: eval and the
loda:<dir> metric apply it to every image they score.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..io_utils import write_json
from ..runtime import add_threads_option, apply_threads, resolve_device
from ..validation import cli_type, non_negative_int, non_negative_number, positive_int, positive_number, seed

if TYPE_CHECKING:
    from .preprocess import Resize


def _train_fraction(text: str) -> float:
    """argparse type of --train-fraction: the check :func:`~iqa_adapter.loda.data.random_splits` makes."""
    from .data import check_train_fraction  # imported when used: it pulls in pandas

    return cli_type(check_train_fraction)(text)


def _resize_size(text: str) -> tuple[int, int] | str:
    """argparse type of --resize: ``WIDTHxHEIGHT`` as (width, height), or ``none``."""
    if text.strip().lower() == "none":
        return "none"
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or 0 in (int(match.group(1)), int(match.group(2))):
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT in pixels (e.g. 512x384) or none, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _folder(text: str) -> str:
    """An argparse type for an output folder: any path but an existing file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder (new or existing)")
    return text


# ---------------------------------------------------------------- argument groups


def _add_data_arguments(parser: argparse.ArgumentParser, splits: bool = True) -> None:
    group = parser.add_argument_group("dataset (pyiqa meta-CSV convention)")
    group.add_argument("--meta", required=True, help="meta CSV: one row per image with its path and MOS")
    group.add_argument("--root", default=None, help="folder the image paths are relative to (default: the CSV's)")
    group.add_argument("--image-column", default=None, help="default: detected (img_name, image_name, dist_name, ...)")
    group.add_argument("--mos-column", default=None, help="default: detected (mos, dmos, ...)")
    group.add_argument("--ref-column", default=None, help="reference image column (default: detected: ref_name, ...)")
    group.add_argument("--lower-is-better", action="store_true", help="the scores are DMOS-like: negate them")
    if not splits:
        return
    split = parser.add_argument_group("split (default: all rows)")
    choice = split.add_mutually_exclusive_group()
    choice.add_argument("--split-column", default=None, help="column of train/val/test values")
    choice.add_argument("--split-file", default=None, help="JSON split file, or pyiqa's .pkl with --trust-pickle")
    choice.add_argument(
        "--random-split",
        type=non_negative_int,
        default=None,
        metavar="K",
        help="split K of the random 80/20 splits (by reference image when references are known)",
    )
    split.add_argument(
        "--split-index", type=non_negative_int, default=0, help="which split of --split-file (default 0)"
    )
    split.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow reading a pickle split file (unpickling runs code from the file: trusted files only)",
    )
    _add_random_split_arguments(split)


def _add_random_split_arguments(group) -> None:
    group.add_argument("--split-seed", type=seed, default=0, help="seed of the random splits")
    group.add_argument(
        "--train-fraction", type=_train_fraction, default=0.8, help="train share of the random splits, in (0, 1)"
    )


def _add_preprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    from .preprocess import DATASET_PRESETS, INTERPOLATIONS

    group = parser.add_argument_group("pre-processing (default: native size; --dataset: the official one)")
    group.add_argument(
        "--dataset",
        choices=tuple(DATASET_PRESETS),
        default=None,
        help="the official resize and training crops per image of this dataset (LIVE, KADID-10k, "
        "FLIVE: shorter side to 384 bicubic; KonIQ-10k, SPAQ: 384 bilinear; TID2013, LIVEC: "
        "native size), unless given below",
    )
    size = group.add_mutually_exclusive_group()
    size.add_argument(
        "--resize-short",
        type=positive_int,
        default=None,
        metavar="N",
        help="resize every image so that its shorter side is N px (aspect kept) before the crops",
    )
    size.add_argument(
        "--resize",
        type=_resize_size,
        default=None,
        metavar="WxH",
        help="resize every image to exactly WxH px before the crops, or 'none' (native size)",
    )
    group.add_argument(
        "--interpolation",
        choices=INTERPOLATIONS,
        default=None,
        help="of the resize (default: the --dataset preset's, else bicubic)",
    )


def _add_model_arguments(parser: argparse.ArgumentParser, variant: bool = True) -> None:
    from .config import BN_MODES, VARIANTS

    group = parser.add_argument_group("model")
    group.add_argument(
        "--preset",
        choices=("base", "tiny"),
        default="base",
        help="base: ViT-B/16 + ResNet-50 (the paper); tiny: small random backbones, 32 px crops",
    )
    if variant:
        group.add_argument(
            "--variant", choices=tuple(VARIANTS), default="loda", help="LoDa or one of the ablation baselines"
        )
    group.add_argument(
        "--bn-mode",
        choices=tuple(BN_MODES),
        default="frozen",
        help="frozen: the CNN's BatchNorm keeps its pretrained statistics; official: they drift in training",
    )
    group.add_argument(
        "--backbone-init",
        choices=("pretrained", "random"),
        default="pretrained",
        help="base preset: pretrained weights (internet or HF cache) or seeded random weights",
    )
    group.add_argument(
        "--vit",
        default=None,
        help="another ViT to load: timm/<model>.<tag> (timm checkpoint), transformers hub id or "
        "directory (default: timm/vit_base_patch16_224.augreg2_in21k_ft_in1k, the official; "
        "e.g. google/vit-base-patch16-224-in21k)",
    )
    group.add_argument(
        "--cnn",
        default=None,
        help="another ResNet to load, as --vit (default: timm/resnet50.a1_in1k, the official; "
        "e.g. microsoft/resnet-50)",
    )
    group.add_argument("--backbone-seed", type=seed, default=0, help="seed of random backbone weights")


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training recipe (defaults: the paper's)")
    group.add_argument("--epochs", type=positive_int, default=10)
    group.add_argument("--batch-size", type=positive_int, default=128)
    group.add_argument("--lr", type=positive_number, default=3e-4, help="learning rate, > 0")
    group.add_argument("--weight-decay", type=non_negative_number, default=1e-2, help="AdamW weight decay, >= 0")
    group.add_argument(
        "--crops-per-image",
        type=positive_int,
        default=None,
        help="random crops per image and epoch (default: the --dataset preset's, else 3; paper: "
        "FLIVE 1, KADID/KonIQ/SPAQ 3, LIVE/LIVEC 5, TID2013 10)",
    )
    group.add_argument("--seed", type=seed, default=3407)
    group.add_argument(
        "--save-every",
        type=non_negative_int,
        default=0,
        help="also save the training state every N iterations (0: at epoch ends only)",
    )
    group.add_argument("--max-iterations", type=positive_int, default=None, help="pause after N iterations (resumable)")
    group.add_argument(
        "--workers", type=non_negative_int, default=0, help="data-loading processes (0: in the main process)"
    )
    _add_device_argument(group)
    group.add_argument("--log-every", type=non_negative_int, default=50, help="log every N iterations (0: never)")
    group.add_argument(
        "--calibration-crops",
        type=non_negative_int,
        default=15,
        help="after training, fit calibrated = a * raw + b to the training MOS with this many uniform "
        "crops per image (0: no calibration; the metric then gives raw cosine scores)",
    )


def _add_device_argument(group) -> None:
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def _add_test_arguments(parser: argparse.ArgumentParser):
    """The testing options; returns their argument group."""
    group = parser.add_argument_group("testing")
    group.add_argument("--test-crops", type=positive_int, default=15, help="crops averaged per test image")
    group.add_argument(
        "--crop-mode",
        choices=("random", "uniform"),
        default="random",
        help="random crops (the paper's protocol, seeded) or a deterministic uniform grid",
    )
    group.add_argument("--eval-seed", type=seed, default=0)
    return group


# ---------------------------------------------------------------- helpers


def _read_table(args, prefix: str = ""):
    from .data import read_meta

    return read_meta(
        getattr(args, f"{prefix}meta"),
        root=getattr(args, f"{prefix}root"),
        image_column=args.image_column,
        mos_column=args.mos_column,
        ref_column=args.ref_column,
        lower_is_better=args.lower_is_better,
    )


def _selected_split(args, table):
    """The split chosen by the split arguments, or None (all rows)."""
    from .data import random_splits, read_split_file, split_from_column

    if args.split_column:
        return split_from_column(table, args.split_column)
    if args.split_file:
        splits = read_split_file(args.split_file, trust_pickle=args.trust_pickle, rows=len(table))
        if args.split_index >= len(splits):
            raise ValueError(
                f"--split-index {args.split_index} is out of range: {args.split_file} holds splits 0 "
                f"to {len(splits) - 1}"
            )
        return splits[args.split_index]
    if args.random_split is not None:
        return random_splits(
            len(table),
            table.refs,
            num_splits=args.random_split + 1,
            train_fraction=args.train_fraction,
            seed=args.split_seed,
        )[args.random_split]
    return None


def _model_config(args, variant: str | None = None):
    """The LoDa config the model options give (``variant``: instead of --variant)."""
    from .config import loda_preset
    from .model import pretrained_backbone_fields

    if args.backbone_init == "random" and (args.vit or args.cnn):
        raise ValueError("--vit / --cnn load pretrained backbones; drop them or --backbone-init random")
    config = loda_preset(
        args.preset,
        pretrained=args.backbone_init == "pretrained" and args.preset == "base",
        variant=variant or args.variant,
        bn_mode=args.bn_mode,
        backbone_seed=args.backbone_seed,
    )
    if args.vit:
        config = config.replace(vit_source=args.vit, vit=pretrained_backbone_fields("vit", args.vit))
    if args.cnn:
        config = config.replace(cnn_source=args.cnn, cnn=pretrained_backbone_fields("cnn", args.cnn))
    return config


def _preprocessing(args) -> tuple[Resize | None, int]:
    """The resize (or None) and training crops per image that the pre-processing options give: explicit
    options over the --dataset preset's values; without either, native size and 3 crops."""
    import dataclasses

    from .preprocess import INTERPOLATIONS, Resize, dataset_preset
    from .train import TrainSettings

    preset = dataset_preset(args.dataset) if args.dataset else None
    resize = preset.resize if preset else None
    interpolation = args.interpolation or (resize.interpolation if resize else INTERPOLATIONS[0])
    if args.resize_short is not None:
        resize = Resize(short_side=args.resize_short, interpolation=interpolation)
    elif args.resize is not None:
        resize = None if args.resize == "none" else Resize(size=args.resize, interpolation=interpolation)
    elif resize is not None:
        resize = dataclasses.replace(resize, interpolation=interpolation)
    if args.interpolation and resize is None:
        raise ValueError(
            "--interpolation is the resize's; give --resize-short N or --resize WxH too (or a --dataset "
            "whose preset resizes)"
        )
    default_crops = preset.crops_per_image if preset else TrainSettings.crops_per_image
    return resize, args.crops_per_image or default_crops


def _settings(args, crops_per_image: int):
    from .train import TrainSettings

    return TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        crops_per_image=crops_per_image,
        seed=args.seed,
        save_every=args.save_every,
        max_iterations=args.max_iterations,
        workers=args.workers,
        device=resolve_device(args.device),
        log_every=args.log_every,
        calibration_crops=args.calibration_crops,
        dataset_preset=args.dataset,
    )


def _print_metrics(label: str, metrics: dict, count: int) -> None:
    values = "  ".join(f"{name.upper()} {value:.4f}" for name, value in metrics.items())
    print(f"{label}: {values}  ({count} images)")


def _calibration_line(calibration) -> str:
    return (
        f"scores: calibrated {calibration.a:.4g} * raw + {calibration.b:.4g} on {calibration.samples} training "
        f"images (MOS range {calibration.mos_min:.4g} to {calibration.mos_max:.4g}, RMSE {calibration.rmse:.3g})"
    )


def _images_line(config) -> str:
    """How a model pre-processes the images it scores, e.g. ``shorter side to 384 px (bicubic) before the
    224 px crops``."""
    return f"{config.resize.describe() if config.resize else 'native size'} before the {config.crop_size} px crops"


def _start(args) -> None:
    """Log progress lines, and set torch's threads (``--threads``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    apply_threads(args.threads, workers=getattr(args, "workers", 0))


# ---------------------------------------------------------------- commands


def cmd_info(args) -> None:
    from .calibration import read_calibration
    from .config import BN_MODES, VARIANTS, LoDaConfig
    from .model import build_model, read_checkpoint_config

    if args.checkpoint:
        meta = read_checkpoint_config(args.checkpoint)
        config = LoDaConfig.from_dict(meta["config"])
        print(f"checkpoint {args.checkpoint}; training: {meta.get('training', '-')}")
        calibration = read_calibration(meta)
        print(_calibration_line(calibration) if calibration else "scores: raw cosine in [-1, 1] (no calibration)")
    else:
        config = _model_config(args)
    counts = build_model(config, device="meta").parameter_counts()
    vit, cnn = config.vit, config.cnn
    print(f"LoDa preset {config.preset}, variant {config.variant}: {VARIANTS[config.variant]}")
    vit_source = config.vit_source or f"random (seed {config.backbone_seed})"
    print(
        f"  ViT: width {vit['hidden_size']}, {vit['num_hidden_layers']} blocks, {vit['num_attention_heads']} heads, "
        f"patch {vit['patch_size']}, crop {config.crop_size}; source {vit_source}"
    )
    if config.uses_cnn:
        print(
            f"  CNN: ResNet {cnn['layer_type']}, stages {cnn['hidden_sizes']}, depths {cnn['depths']}; source "
            f"{config.cnn_source or f'random (seed {config.backbone_seed + 1})'}"
        )
        print(
            f"  adapter: r = {config.latent_dim}, {config.cross_attn_heads} cross-attention heads, "
            f"{len(cnn['hidden_sizes'])} x {config.grid_size}x{config.grid_size} distortion tokens"
        )
        print(f"  BatchNorm: {config.bn_mode}: {BN_MODES[config.bn_mode]}")
    print(f"  images: {_images_line(config)}")
    print(f"trainable parameters: {counts['trainable']:,}")
    print(f"total parameters: {counts['total']:,}")


def cmd_make_dataset(args) -> None:
    from .synthetic import make_dataset

    families = [f.strip() for f in args.families.split(",")] if args.families else None
    options = {"families": families} if families else {}
    meta = make_dataset(
        args.out,
        num_references=args.references,
        size=args.size,
        levels=args.levels,
        seed=args.seed,
        measure=args.measure,
        **options,
    )
    print(f"wrote {meta} ({len(Path(meta).read_text().splitlines()) - 1} distorted images)")


def cmd_train(args) -> None:
    from .calibration import read_calibration
    from .data import drop_unreadable
    from .evaluate import correlation_metrics, predict
    from .model import read_checkpoint_config
    from .preprocess import describe_preprocessing
    from .train import train

    _start(args)
    resize, crops_per_image = _preprocessing(args)
    config, settings = _model_config(args).replace(resize=resize), _settings(args, crops_per_image)
    table = _read_table(args)
    split = _selected_split(args, table) or {"train": list(range(len(table))), "test": []}
    split = drop_unreadable(
        table, [{"train": split["train"], "test": [] if args.no_test else split["test"]}], args.out
    )[0]
    model = train(config, table, split["train"], settings, args.out, resume=args.resume)
    print(f"checkpoint in {args.out} (trained on {len(split['train'])} images)")
    preprocessing = describe_preprocessing(config.resize, config.crop_size, settings.crops_per_image, args.dataset)
    print(f"pre-processing: {preprocessing}")
    calibration = read_calibration(read_checkpoint_config(args.out))
    if calibration is not None:
        print(_calibration_line(calibration))
    if split["test"]:
        predictions = predict(
            model, table, split["test"], crops=args.test_crops, crop_mode=args.crop_mode, seed=args.eval_seed
        )
        metrics = correlation_metrics(predictions, table.mos[split["test"]])
        write_json(Path(args.out) / "test_metrics.json", metrics)
        _print_metrics("test", metrics, len(split["test"]))


def cmd_eval(args) -> None:
    from .data import IQADataError, drop_unreadable
    from .evaluate import correlation_metrics, predict
    from .model import LoDa, read_checkpoint_config

    _start(args)
    device = resolve_device(args.device)
    read_checkpoint_config(args.checkpoint)  # a missing or broken checkpoint fails before any image is read
    table = _read_table(args)
    split = _selected_split(args, table)
    rows = split["test"] if split is not None else list(range(len(table)))
    if not rows:
        raise IQADataError(
            "the chosen split has no test rows; choose a split with a test part, or give no split "
            "to test on every row of --meta"
        )
    rows = drop_unreadable(table, [{"test": rows}], args.out)[0]["test"]
    model = LoDa.from_pretrained(args.checkpoint, device=device)
    predictions = predict(model, table, rows, crops=args.test_crops, crop_mode=args.crop_mode, seed=args.eval_seed)
    metrics = correlation_metrics(predictions, table.mos[rows])
    _print_metrics(f"{args.checkpoint} on {args.meta}", metrics, len(rows))
    print(f"images: {_images_line(model.config)} (the checkpoint's pre-processing)")
    if args.out:
        scores = {str(table.paths[row]): float(score) for row, score in zip(rows, predictions)}
        write_json(
            Path(args.out) / "eval.json",
            {"checkpoint": args.checkpoint, "meta": args.meta, "metrics": metrics, "predictions": scores},
        )


def cmd_protocol(args) -> None:
    from .data import random_splits
    from .evaluate import format_summary
    from .preprocess import describe_preprocessing
    from .protocol import run_protocol

    _start(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise ValueError("--variants names no variant; give a comma-separated list such as loda,linear_probe")
    if args.test_root and not args.test_meta:
        raise ValueError("--test-root is the image folder of --test-meta; give --test-meta too, or drop --test-root")
    resize, crops_per_image = _preprocessing(args)
    configs = {variant: _model_config(args, variant).replace(resize=resize) for variant in variants}
    settings = _settings(args, crops_per_image)
    table = _read_table(args)
    test_table = _read_table(args, prefix="test_") if args.test_meta else None
    splits = random_splits(
        len(table), table.refs, num_splits=args.splits, train_fraction=args.train_fraction, seed=args.split_seed
    )
    results = run_protocol(
        table,
        splits,
        configs,
        settings,
        args.out,
        test_table=test_table,
        test_crops=args.test_crops,
        crop_mode=args.crop_mode,
        eval_seed=args.eval_seed,
    )
    by_reference = "by reference image" if table.refs is not None else "by image"
    first = next(iter(configs.values()))
    print(f"pre-processing: {describe_preprocessing(resize, first.crop_size, crops_per_image, args.dataset)}")
    print(
        f"{args.splits} random {args.train_fraction:.0%} train splits ({by_reference}); "
        f"test on {args.test_meta or 'the held-out part'}; median (mean +- std):"
    )
    for name, result in results.items():
        print(format_summary(name, result["summary"]))


def add_commands(subparsers) -> None:
    """Add ``loda`` and its subcommands to the ``iqa-adapter`` command line."""
    loda = subparsers.add_parser(
        "loda",
        help="LoDa IQA model: info, make-dataset, train, eval, protocol",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = loda.add_subparsers(dest="loda_command", required=True)

    info = commands.add_parser("info", help="architecture and parameter counts of a preset or a checkpoint")
    info.add_argument("--checkpoint", default=None, help="a checkpoint directory instead of a preset")
    _add_model_arguments(info)
    info.set_defaults(func=cmd_info)

    make = commands.add_parser("make-dataset", help="write a synthetic distortion dataset (pseudo-MOS from SSIM)")
    make.add_argument("--out", type=_folder, required=True)
    make.add_argument("--references", type=positive_int, default=8, help="procedural clean images")
    make.add_argument("--size", type=positive_int, default=48, help="image side in pixels")
    make.add_argument("--levels", type=positive_int, default=5, help="levels per family (k / levels)")
    make.add_argument("--families", default=None, help="comma-separated (default: all of iqa_adapter.distortions)")
    make.add_argument("--measure", choices=("ssim", "ms_ssim"), default="ssim")
    make.add_argument("--seed", type=seed, default=0)
    make.set_defaults(func=cmd_make_dataset)

    train = commands.add_parser("train", help="train LoDa (or a baseline) on an IQA dataset")
    _add_data_arguments(train)
    _add_preprocessing_arguments(train)
    _add_model_arguments(train)
    _add_recipe_arguments(train)
    _add_test_arguments(train)
    train.add_argument("--out", type=_folder, required=True, help="checkpoint folder")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.add_argument("--no-test", action="store_true", help="skip testing on the split's test part")
    add_threads_option(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="test a trained checkpoint on a dataset (SRCC, PLCC, KRCC, RMSE)")
    evaluate.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint folder to test (the --out of `loda train`; cross-dataset: trained on another dataset)",
    )
    _add_data_arguments(evaluate)
    _add_device_argument(_add_test_arguments(evaluate))
    evaluate.add_argument(
        "--out", type=_folder, default=None, help="folder to write eval.json (metrics and per-image scores) to"
    )
    add_threads_option(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    protocol = commands.add_parser(
        "protocol",
        help="the paper's protocol: train and test LoDa and its baselines on "
        "random splits, summarised (median, mean +- std)",
    )
    _add_data_arguments(protocol, splits=False)
    _add_preprocessing_arguments(protocol)
    splits = protocol.add_argument_group("protocol")
    splits.add_argument(
        "--splits",
        type=positive_int,
        default=10,
        help="random train/test splits (by reference image when references are known)",
    )
    _add_random_split_arguments(splits)
    splits.add_argument(
        "--variants", default="loda", help="comma-separated: loda,linear_probe,full_finetune,add_tokens"
    )
    splits.add_argument("--test-meta", default=None, help="test on this other dataset instead (cross-dataset)")
    splits.add_argument("--test-root", default=None, help="image folder of --test-meta (default: its CSV's)")
    _add_model_arguments(protocol, variant=False)
    _add_recipe_arguments(protocol)
    _add_test_arguments(protocol)
    protocol.add_argument(
        "--out",
        type=_folder,
        required=True,
        help="run folder (running again skips finished runs and resumes an interrupted one)",
    )
    add_threads_option(protocol)
    protocol.set_defaults(func=cmd_protocol)
