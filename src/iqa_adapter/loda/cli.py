"""``iqa-adapter loda ...``: describe, train and evaluate LoDa models, and make synthetic IQA datasets.

    iqa-adapter loda info --preset base
    iqa-adapter loda make-dataset --out data/synthetic
    iqa-adapter loda train --meta data/synthetic/meta.csv --preset tiny --random-split 0 --out runs/tiny
    iqa-adapter loda eval --checkpoint runs/tiny --meta data/synthetic/meta.csv --random-split 0
    iqa-adapter loda eval --protocol --meta data/synthetic/meta.csv --preset tiny --out runs/protocol
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..io_utils import write_json


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


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
    choice.add_argument("--random-split", type=int, default=None, metavar="K",
                        help="split K of the random 80/20 splits (by reference image when references are known)")
    split.add_argument("--split-index", type=int, default=0, help="which split of --split-file (default 0)")
    split.add_argument("--trust-pickle", action="store_true",
                       help="allow reading a pickle split file (unpickling runs code from the file: "
                            "trusted files only)")
    split.add_argument("--split-seed", type=int, default=0, help="seed of the random splits")
    split.add_argument("--train-fraction", type=float, default=0.8, help="train share of the random splits")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import BN_MODES, VARIANTS

    group = parser.add_argument_group("model")
    group.add_argument("--preset", choices=("base", "tiny"), default="base",
                       help="base: ViT-B/16 + ResNet-50 (the paper); tiny: small random backbones, 32 px crops")
    group.add_argument("--variant", choices=tuple(VARIANTS), default="loda",
                       help="LoDa or one of the ablation baselines")
    group.add_argument("--bn-mode", choices=tuple(BN_MODES), default="frozen",
                       help="frozen: the CNN's BatchNorm keeps its pretrained statistics; official: they drift "
                            "in training")
    group.add_argument("--backbone-init", choices=("pretrained", "random"), default="pretrained",
                       help="base preset: pretrained weights (internet or HF cache) or seeded random weights")
    group.add_argument("--vit", default=None, help="another ViT to load (hub id or directory), e.g. a ViT-S/16")
    group.add_argument("--cnn", default=None, help="another ResNet to load (hub id or directory)")
    group.add_argument("--backbone-seed", type=int, default=0, help="seed of random backbone weights")


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training recipe (defaults: the paper's)")
    group.add_argument("--epochs", type=_positive_int, default=10)
    group.add_argument("--batch-size", type=_positive_int, default=128)
    group.add_argument("--lr", type=float, default=3e-4)
    group.add_argument("--weight-decay", type=float, default=1e-2)
    group.add_argument("--crops-per-image", type=_positive_int, default=3,
                       help="random crops per image and epoch (paper: KADID/KonIQ/SPAQ 3, LIVE/LIVEC 5, TID2013 10)")
    group.add_argument("--seed", type=int, default=3407)
    group.add_argument("--save-every", type=int, default=0, help="also save the training state every N iterations")
    group.add_argument("--max-iterations", type=_positive_int, default=None,
                       help="pause after N iterations (resumable)")
    group.add_argument("--workers", type=int, default=0, help="data-loading processes")
    group.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    group.add_argument("--log-every", type=int, default=50)
    group.add_argument("--calibration-crops", type=int, default=15,
                       help="after training, fit calibrated = a * raw + b to the training MOS with this many uniform "
                            "crops per image (0: no calibration; the metric then gives raw cosine scores)")


def _add_test_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("testing")
    group.add_argument("--test-crops", type=_positive_int, default=15, help="crops averaged per test image")
    group.add_argument("--crop-mode", choices=("random", "uniform"), default="random",
                       help="random crops (the paper's protocol, seeded) or a deterministic uniform grid")
    group.add_argument("--eval-seed", type=int, default=0)


# ---------------------------------------------------------------- helpers


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _read_table(args, prefix: str = ""):
    from .data import read_meta

    return read_meta(getattr(args, f"{prefix}meta"), root=getattr(args, f"{prefix}root"),
                     image_column=args.image_column, mos_column=args.mos_column, ref_column=args.ref_column,
                     lower_is_better=args.lower_is_better)


def _selected_split(args, table):
    """The split chosen by the split arguments, or None (all rows)."""
    from .data import random_splits, read_split_file, split_from_column

    if args.split_column:
        return split_from_column(table, args.split_column)
    if args.split_file:
        splits = read_split_file(args.split_file, trust_pickle=args.trust_pickle)
        if not 0 <= args.split_index < len(splits):
            raise ValueError(f"--split-index {args.split_index} is out of range: {args.split_file} has "
                             f"{len(splits)} splits")
        return splits[args.split_index]
    if args.random_split is not None:
        return random_splits(len(table), table.refs, num_splits=args.random_split + 1,
                             train_fraction=args.train_fraction, seed=args.split_seed)[args.random_split]
    return None


def _model_config(args):
    from transformers import ResNetConfig, ViTConfig

    from .config import CNN_KEYS, VIT_KEYS, loda_preset

    if args.backbone_init == "random" and (args.vit or args.cnn):
        raise ValueError("--vit / --cnn load pretrained backbones; drop them or --backbone-init random")
    config = loda_preset(args.preset, pretrained=args.backbone_init == "pretrained" and args.preset == "base",
                         variant=args.variant, bn_mode=args.bn_mode, backbone_seed=args.backbone_seed)
    if args.vit:
        source = ViTConfig.from_pretrained(args.vit).to_dict()
        config = config.replace(vit_source=args.vit, vit={key: source[key] for key in VIT_KEYS})
    if args.cnn:
        source = ResNetConfig.from_pretrained(args.cnn).to_dict()
        config = config.replace(cnn_source=args.cnn, cnn={key: source[key] for key in CNN_KEYS})
    return config


def _settings(args):
    from .train import TrainSettings

    return TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         crops_per_image=args.crops_per_image, seed=args.seed, save_every=args.save_every,
                         max_iterations=args.max_iterations, workers=args.workers, device=_device(args.device),
                         log_every=args.log_every, calibration_crops=args.calibration_crops)


def _print_metrics(label: str, metrics: dict, count: int) -> None:
    values = "  ".join(f"{name.upper()} {value:.4f}" for name, value in metrics.items())
    print(f"{label}: {values}  ({count} images)")


def _calibration_line(calibration) -> str:
    return (f"scores: calibrated {calibration.a:.4g} * raw + {calibration.b:.4g} on {calibration.samples} training "
            f"images (MOS range {calibration.mos_min:.4g} to {calibration.mos_max:.4g}, RMSE {calibration.rmse:.3g})")


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")


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
    print(f"  ViT: width {vit['hidden_size']}, {vit['num_hidden_layers']} blocks, {vit['num_attention_heads']} heads, "
          f"patch {vit['patch_size']}, crop {config.crop_size}; source {vit_source}")
    if config.uses_cnn:
        print(f"  CNN: ResNet {cnn['layer_type']}, stages {cnn['hidden_sizes']}, depths {cnn['depths']}; source "
              f"{config.cnn_source or f'random (seed {config.backbone_seed + 1})'}")
        print(f"  adapter: r = {config.latent_dim}, {config.cross_attn_heads} cross-attention heads, "
              f"{len(cnn['hidden_sizes'])} x {config.grid_size}x{config.grid_size} distortion tokens")
        print(f"  BatchNorm: {config.bn_mode}: {BN_MODES[config.bn_mode]}")
    print(f"trainable parameters: {counts['trainable']:,}")
    print(f"total parameters: {counts['total']:,}")


def cmd_make_dataset(args) -> None:
    from .synthetic import make_dataset

    families = [f.strip() for f in args.families.split(",")] if args.families else None
    options = {"families": families} if families else {}
    meta = make_dataset(args.out, num_references=args.references, size=args.size, levels=args.levels,
                        seed=args.seed, measure=args.measure, **options)
    print(f"wrote {meta} ({sum(1 for _ in open(meta)) - 1} distorted images)")


def cmd_train(args) -> None:
    from .calibration import read_calibration
    from .evaluate import correlation_metrics, predict
    from .model import read_checkpoint_config
    from .train import train

    _logging()
    table = _read_table(args)
    split = _selected_split(args, table)
    train_rows = split["train"] if split is not None else list(range(len(table)))
    model = train(_model_config(args), table, train_rows, _settings(args), args.out, resume=args.resume)
    print(f"checkpoint in {args.out} (trained on {len(train_rows)} images)")
    calibration = read_calibration(read_checkpoint_config(args.out))
    if calibration is not None:
        print(_calibration_line(calibration))
    if split is not None and split["test"] and not args.no_test:
        predictions = predict(model, table, split["test"], crops=args.test_crops, crop_mode=args.crop_mode,
                              seed=args.eval_seed)
        metrics = correlation_metrics(predictions, table.mos[split["test"]])
        write_json(Path(args.out) / "test_metrics.json", metrics)
        _print_metrics("test", metrics, len(split["test"]))


def cmd_eval(args) -> None:
    from .evaluate import correlation_metrics, format_summary, predict

    _logging()
    table = _read_table(args)
    if args.protocol:
        from .data import random_splits
        from .protocol import run_protocol

        if args.checkpoint or args.out is None:
            raise ValueError("--protocol trains its own models: give --out and no --checkpoint")
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        base = _model_config(args)
        configs = {variant: base.replace(variant=variant) for variant in variants}
        splits = random_splits(len(table), table.refs, num_splits=args.splits, train_fraction=args.train_fraction,
                               seed=args.split_seed)
        test_table = _read_table(args, prefix="test_") if args.test_meta else None
        results = run_protocol(table, splits, configs, _settings(args), args.out, test_table=test_table,
                               test_crops=args.test_crops, crop_mode=args.crop_mode, eval_seed=args.eval_seed)
        by_reference = "by reference image" if table.refs is not None else "by image"
        print(f"{args.splits} random {args.train_fraction:.0%} train splits ({by_reference}); "
              f"test on {args.test_meta or 'the held-out part'}; median (mean +- std):")
        for name, result in results.items():
            print(format_summary(name, result["summary"]))
        return
    from .model import LoDa

    if not args.checkpoint:
        raise ValueError("give --checkpoint DIR to test a trained model, or --protocol to run the split protocol")
    model = LoDa.from_pretrained(args.checkpoint, device=_device(args.device))
    split = _selected_split(args, table)
    rows = split["test"] if split is not None else list(range(len(table)))
    predictions = predict(model, table, rows, crops=args.test_crops, crop_mode=args.crop_mode, seed=args.eval_seed)
    metrics = correlation_metrics(predictions, table.mos[rows])
    _print_metrics(f"{args.checkpoint} on {args.meta}", metrics, len(rows))
    if args.out:
        scores = {str(table.paths[row]): float(score) for row, score in zip(rows, predictions)}
        write_json(Path(args.out) / "eval.json",
                   {"checkpoint": args.checkpoint, "meta": args.meta, "metrics": metrics, "predictions": scores})


def add_commands(subparsers) -> None:
    """Add ``loda`` and its subcommands to the ``iqa-adapter`` command line."""
    loda = subparsers.add_parser("loda", help="LoDa IQA model: info, make-dataset, train, eval",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = loda.add_subparsers(dest="loda_command", required=True)

    info = commands.add_parser("info", help="architecture and parameter counts of a preset or a checkpoint")
    info.add_argument("--checkpoint", default=None, help="a checkpoint directory instead of a preset")
    _add_model_arguments(info)
    info.set_defaults(func=cmd_info)

    make = commands.add_parser("make-dataset", help="write a synthetic distortion dataset (pseudo-MOS from SSIM)")
    make.add_argument("--out", required=True)
    make.add_argument("--references", type=_positive_int, default=8, help="procedural clean images")
    make.add_argument("--size", type=_positive_int, default=48, help="image side in pixels")
    make.add_argument("--levels", type=_positive_int, default=5, help="levels per family (k / levels)")
    make.add_argument("--families", default=None, help="comma-separated (default: all of iqa_adapter.distortions)")
    make.add_argument("--measure", choices=("ssim", "ms_ssim"), default="ssim")
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(func=cmd_make_dataset)

    train = commands.add_parser("train", help="train LoDa (or a baseline) on an IQA dataset")
    _add_data_arguments(train)
    _add_model_arguments(train)
    _add_recipe_arguments(train)
    _add_test_arguments(train)
    train.add_argument("--out", required=True, help="checkpoint directory")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.add_argument("--no-test", action="store_true", help="skip testing on the split's test part")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="test a checkpoint, or run the random-split protocol")
    _add_data_arguments(evaluate)
    _add_model_arguments(evaluate)
    _add_recipe_arguments(evaluate)
    _add_test_arguments(evaluate)
    evaluate.add_argument("--checkpoint", default=None, help="checkpoint to test (cross-dataset: trained elsewhere)")
    evaluate.add_argument("--protocol", action="store_true", help="train and test on --splits random splits")
    evaluate.add_argument("--splits", type=_positive_int, default=10)
    evaluate.add_argument("--variants", default="loda",
                          help="comma-separated: loda,linear_probe,full_finetune,add_tokens")
    evaluate.add_argument("--test-meta", default=None, help="protocol: test on this other dataset (cross-dataset)")
    evaluate.add_argument("--test-root", default=None, help="image folder of --test-meta (default: its CSV's)")
    evaluate.add_argument("--out", default=None, help="protocol: run directory; checkpoint: where to write eval.json")
    evaluate.set_defaults(func=cmd_eval)
