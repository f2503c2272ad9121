"""The ``iqa-adapter`` command line.

Every command checks its options and input files before it loads a model, and reports a problem as one line,
``error: ...``, with exit code 2 (usage errors included); set ``IQA_ADAPTER_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from .cli_common import (
    add_adapter_location_options,
    add_generation_options,
    comma_list,
    load_adapter,
    metric_options,
    plural,
    resolve_model_and_sampling,
    torch_dtype,
)
from .datasets import RESIZE_MODES
from .images import DEFAULT_MAX_PIXELS
from .runtime import add_threads_option, apply_threads, hide_loading_bars, resolve_device
from .stats import QualityTargetError
from .validation import (
    check_scale,
    finite_number,
    fraction,
    non_negative_int,
    non_negative_number,
    positive_int,
    positive_number,
)

DEBUG_VARIABLE = "IQA_ADAPTER_DEBUG"


class CommandLineParser(argparse.ArgumentParser):
    """argparse with one-line errors that point to the command's help; exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class StoreOnce(argparse.Action):
    """An option that may be given once: a second occurrence is an error, not silently dropped."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} is given twice; give it once")
        setattr(namespace, self.dest, values)


def _scale(text: str):
    """``--scale 0.5`` or a per-block JSON dict ``--scale '{"up": {"block_0": [0, 1, 0]}}'``, checked."""
    try:
        value = float(text)
    except ValueError:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise argparse.ArgumentTypeError(
                f"takes a number >= 0 or a JSON dict of per-block scales, got {text!r}"
            ) from None
    try:
        return check_scale("scale", value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("scale ")) from None


def _window(text: str) -> tuple[float, float]:
    """``--guidance-window START,END`` with 0 <= START < END <= 1."""
    start, _, end = text.partition(",")
    try:
        window = (float(start), float(end or 1.0))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes START,END (fractions of sampling, e.g. 0.5,1), got {text!r}") from None
    if not 0.0 <= window[0] < window[1] <= 1.0:
        raise argparse.ArgumentTypeError(f"must satisfy 0 <= START < END <= 1, got {text!r}")
    return window


def _resize(text: str) -> int | None:
    """``--resize 512`` or ``none``."""
    if text.strip().lower() in ("none", "native"):
        return None
    return positive_int(text)


def _qualities(args) -> tuple[list[dict], str | None]:
    from .targets import parse_quality_assignment

    fixed: dict[str, str] = {}
    for item in args.quality:
        metric, target = parse_quality_assignment(item)
        if metric in fixed:
            raise QualityTargetError(f"--quality gives {metric!r} twice ({fixed[metric]} and {target}); give it once")
        fixed[metric] = target
    if args.sweep is None:
        return [fixed], None
    metric, targets = parse_quality_assignment(args.sweep)
    if metric in fixed:
        raise QualityTargetError(f"metric {metric!r} is given both by --quality and --sweep; keep one")
    from .generation import sweep_qualities

    return sweep_qualities(fixed, metric, [t.strip() for t in targets.split(",") if t.strip()]), metric


def _iqa_guidance(args, device: str):
    """The IQA-gradient guidance the generate arguments ask for, or None."""
    if args.guidance_metric is None:
        return None
    from .guidance import IQAGuidance
    from .metrics import create_metric

    metric = create_metric(args.guidance_metric, device=device).eval()
    return IQAGuidance(
        metric,
        alpha=args.guidance_alpha,
        window=args.guidance_window,
        decode_scale=args.guidance_decode_scale,
        checkpointing=not args.no_guidance_checkpointing,
    )


def _read_images(paths: list[str], option: str) -> list:
    """The images named by an option, read before any model is loaded (errors name the option and the file)."""
    from .images import open_image

    return [open_image(path, name=f"{option} {path!r}") for path in paths]


def cmd_generate(args) -> None:
    from .generation import (
        check_output_folder,
        check_targets,
        fit_init_image,
        generate,
        per_adapter_scales,
        save_images,
        sweep_grid,
    )
    from .pipelines import load_pipeline

    device = resolve_device(args.device)
    dtype = torch_dtype(args.dtype, device)
    check_output_folder(args.out, args.overwrite)
    toy = resolve_model_and_sampling(args, reference=bool(args.reference))
    apply_threads(args.threads, toy=toy)
    if args.negative_reference and not args.reference:
        raise ValueError("--negative-reference goes with --reference")
    locations = [args.adapter] if isinstance(args.adapter, str) else list(args.adapter or [])
    if args.no_adapter:
        if args.quality or args.sweep or args.reference or args.negative_quality is not None or locations:
            raise ValueError(
                "--adapter, --quality, --sweep, --negative-quality and --reference need an adapter; drop --no-adapter"
            )
        adapters, scales, qualities, sweep_metric = [], [], None, None
    else:
        if not locations:
            raise ValueError("give --adapter DIR (or --no-adapter for the base model alone)")
        adapters = [load_adapter(location, args) for location in locations]
        scales = per_adapter_scales(args.scale[0] if args.scale and len(args.scale) == 1 else args.scale, len(adapters))
        if any(adapter.config.condition == "reference" for adapter in adapters):
            if len(adapters) > 1:
                raise ValueError("a reference-based adapter conditions alone: give one --adapter with --reference")
            if not args.reference or args.quality or args.sweep:
                raise ValueError(
                    f"{locations[0]} is a reference-based adapter: give --reference IMAGE (repeatable), "
                    "not --quality or --sweep"
                )
            qualities, sweep_metric = None, None
        else:
            if args.reference:
                raise ValueError(f"{locations[0]} is conditioned on quality scores: give --quality, not --reference")
            qualities, sweep_metric = _qualities(args)
            check_targets(adapters, qualities)  # fail on bad targets before loading a large model
    references = {}
    if args.reference:
        negative = (
            _read_images([args.negative_reference], "--negative-reference") if args.negative_reference else [None]
        )
        references = {"references": _read_images(args.reference, "--reference"), "negative_reference": negative[0]}
    init_image = _read_images([args.init_image], "--init-image")[0] if args.init_image else None
    if args.no_progress:
        hide_loading_bars()
    iqa_guidance = _iqa_guidance(args, device)
    pipe = load_pipeline(args.base, device, dtype)
    for adapter, scale in zip(adapters, scales):
        adapter.attach(pipe, scale=scale)
    extra = {}
    if init_image is not None:
        from diffusers import AutoPipelineForImage2Image

        pipe = AutoPipelineForImage2Image.from_pipe(pipe)  # the same components, adapter included
        fitted = fit_init_image(init_image, pipe, args.width, args.height)
        if fitted.size != init_image.size:
            print(
                f"--init-image resized from {init_image.width}x{init_image.height} to {fitted.width}x{fitted.height} "
                "(the size to generate: --width/--height, default the base model's)"
            )
        extra = {"image": fitted, "strength": args.strength}
    started = time.perf_counter()
    results = generate(
        pipe,
        adapters[0] if len(adapters) == 1 else adapters or None,
        args.prompt,
        qualities,
        negative_prompt=args.negative_prompt,
        negative_quality=args.negative_quality,
        seed=args.seed,
        num_images=args.num_images,
        steps=args.steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        iqa_guidance=iqa_guidance,
        progress=not args.no_progress,
        **references,
        **extra,
    )
    elapsed = time.perf_counter() - started
    paths = save_images(
        results,
        args.out,
        overwrite=args.overwrite,
        extra={
            "base": args.base,
            "adapter": (locations[0] if len(locations) == 1 else locations) if adapters else None,
            "reference_files": args.reference,
            "negative_reference_file": args.negative_reference,
            "init_image": args.init_image,
            "strength": args.strength if args.init_image else None,
        },
    )
    print(
        f"wrote {plural(len(paths), 'image')} with JSON sidecars to {args.out} ({elapsed:.1f} s, "
        f"{len(paths) / max(elapsed, 1e-9):.2f} images/s)"
    )
    if sweep_metric is not None:
        grid_path = Path(args.out) / f"sweep_{sweep_metric}.png"
        sweep_grid(results, sweep_metric).save(grid_path)
        print(f"wrote the sweep grid {grid_path}")


def cmd_convert_official(args) -> None:
    from .convert import from_official

    metrics = comma_list(args.metrics) if args.metrics else None
    adapter = from_official(
        args.checkpoint,
        args.base,
        metrics,
        weight_name=args.weight_name,
        revision=args.revision,
        stats=args.stats,
        trust_pickle=args.trust_pickle,
        encoding_frequencies=args.encoding_frequencies,
    )
    adapter.save_pretrained(args.out)
    config = adapter.config
    print(
        f"converted {config.extra['converted_from']} -> {args.out}: {len(config.layers)} layers, "
        f"{config.num_tokens} tokens, {config.projection} projection, flag={config.flag_feature}, "
        f"L={config.encoding_frequencies}, metrics {', '.join(config.metric_names)}"
    )


def cmd_info(args) -> None:
    from .config import CONFIG_NAME
    from .io_utils import read_json

    adapter = load_adapter(args.adapter, args)  # the weights must load too
    config, folder = adapter.config, adapter.source_directory
    recorded = "train_scale" in read_json(folder / CONFIG_NAME, "adapter config")
    print(
        f"base model: {config.describe_base_model(folder)}  (cross-attention width "
        f"{config.cross_attention_dim}, {len(config.layers)} layers)"
    )
    print(
        f"projection: {config.projection}, {config.num_tokens} tokens, flag={config.flag_feature}, "
        f"L={config.encoding_frequencies}"
    )
    print(
        f"adapter scale: {config.default_scale} when generating (default), trained at {config.train_scale}"
        + (
            ""
            if recorded
            else " (not recorded: adapters saved before the train scale was stored were trained "
            "at 0.5, so for them lambda 0.5 is full training strength, the official lambda 1.0)"
        )
    )
    if config.condition == "reference":
        reference = config.reference
        print(
            f"conditioned on reference images: {reference['feature_dim']} features of {reference['metric']} "
            f"({', '.join(reference['layers'])})"
        )
        return
    defaults = config.default_targets
    print(
        f"targets in quality order (p99 = better than 99 % of the training images); default for a metric a call "
        f"leaves out: {', '.join(f'{k}={v}' for k, v in defaults.items()) or 'none, every metric must be named'}"
    )
    for metric in config.metrics:
        direction = "higher" if metric.higher_is_better else "lower"
        low, high = metric.raw_range()
        print(
            f"  {metric.name} ({direction} is better): mean {metric.mean:.4g}, std {metric.std:.4g}, training "
            f"scores {low:.4g} to {high:.4g}"
        )
        table = sorted(metric.percentiles)
        if table:
            shown = [p for p in (1, 5, 25, 50, 75, 95, 99) if table[0] <= p <= table[-1]]
            print("    " + ", ".join(f"p{p} = {metric.raw_from_percentile(p):.4g}" for p in shown))


def cmd_push(args) -> None:
    from .io_utils import read_json

    adapter = load_adapter(args.adapter, args)
    evaluation = None if args.evaluation is None else read_json(Path(args.evaluation), "evaluation report")
    url = adapter.push_to_hub(
        args.repo_id,
        evaluation=evaluation,
        private=args.private or None,
        token=args.token,
        license=args.license,
        commit_message=args.commit_message,
    )
    print(f"uploaded {args.adapter} to {args.repo_id}: {url}")


def cmd_annotate(args) -> None:
    from .annotate import annotate

    device = None if args.device is None else resolve_device(args.device)
    apply_threads(args.threads, workers=args.workers)
    if args.no_progress:
        hide_loading_bars()
    annotate(
        args.data,
        comma_list(args.metrics),
        args.out,
        batch_size=args.batch_size,
        num_workers=args.workers,
        resize=args.resize,
        device=device,
        chunk_size=args.chunk_size,
        max_pixels=args.max_pixels,
        resize_mode=args.resize_mode,
        metric_options=metric_options(args.metric_option),
        through_vae=args.through_vae,
        progress=not args.no_progress,
    )


def cmd_metrics(args) -> None:
    from .metrics import list_metrics

    infos = list_metrics()
    width = max(len(info.name) for info in infos)
    print(f"{'name':{width}s}  {'better':6s}  {'range':>16s}  {'grad':4s}  {'backend':7s}  description")
    for info in infos:
        low, high = info.score_range
        print(
            f"{info.name:{width}s}  {'higher' if info.higher_is_better else 'lower':6s}  {f'{low:g} .. {high:g}':>16s}  "
            f"{'yes' if info.differentiable else 'no':4s}  {info.backend:7s}  {info.description}"
        )


def cmd_niqe_fit(args) -> None:
    from .metrics.niqe import fit_niqe_folder

    fit = fit_niqe_folder(
        args.images, args.out, patch_size=args.patch_size, sharpness_threshold=args.sharpness_threshold
    )
    print(f"fitted NIQE on {fit.patches_used} patches of {plural(fit.images_used, 'image')} -> {fit.path}")
    for name, reason in fit.skipped.items():
        print(f"  skipped {name}: {reason}")
    print(f"use it with: --metrics niqe --metric-option niqe.params={fit.path}")


def cmd_demo(args) -> None:
    from .demo import DemoSettings, run_demo
    from .toy.world import ToyWorld, WorldSettings, build_world, shipped_world

    threads = apply_threads(args.threads, toy=True)
    started = time.perf_counter()
    if args.retrain:
        world = build_world(Path(args.out) / "world", WorldSettings.miniature() if args.quick else WorldSettings())
    else:
        world = (ToyWorld(Path(args.world)) if args.world else shipped_world()).check()
    run_demo(args.out, world, DemoSettings.quick() if args.quick else DemoSettings(), pairs=args.pairs)
    print(f"total {time.perf_counter() - started:.0f} s on {plural(threads, 'thread')}")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(prog="iqa-adapter", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser(
        "generate",
        help="generate images at chosen quality levels",
        description="Generate images at chosen quality levels. Writes OUT/NNNN.png with a NNNN.json sidecar of its "
        "settings; an --out that holds images of an earlier run is refused unless --overwrite.",
    )
    add_generation_options(generate, adapters="several")
    generate.add_argument(
        "--no-adapter", action="store_true", help="the base model alone (e.g. with gradient guidance)"
    )
    generate.add_argument("--prompt", required=True, action="append", help="prompt; repeat for several")
    generate.add_argument("--negative-prompt", default=None)
    generate.add_argument(
        "--quality",
        action="append",
        default=[],
        metavar="METRIC=TARGET",
        help="target per metric: p99 (percentile), z2.0 (z-score) or 0.73 (raw value)",
    )
    generate.add_argument(
        "--sweep",
        default=None,
        action=StoreOnce,
        metavar="METRIC=T1,T2,...",
        help="generate one image per target of this metric and a labelled grid",
    )
    generate.add_argument(
        "--scale",
        type=_scale,
        action="append",
        default=None,
        help="adapter scale lambda >= 0 (default: the adapter's, 0.5) or a per-block JSON dict; with several "
        "--adapter, one per adapter in the same order, or one for all",
    )
    generate.add_argument(
        "--negative-quality",
        type=non_negative_number,
        nargs="?",
        const=1.0,
        default=None,
        metavar="K",
        help="negative quality guidance: unconditional branch gets -K*q (K defaults to 1.0)",
    )
    generate.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="IMAGE",
        help="reference-based adapters: transfer this image's quality (repeatable)",
    )
    generate.add_argument(
        "--negative-reference",
        default=None,
        metavar="IMAGE",
        help="reference-based adapters: an image whose quality to steer away from (CFG branch)",
    )
    generate.add_argument(
        "--init-image",
        default=None,
        metavar="IMAGE",
        help="img2img: start from this image, resized to --width x --height (default: the base model's size)",
    )
    generate.add_argument(
        "--strength", type=positive_number, default=0.6, help="img2img: how much of the image to redo, in (0, 1]"
    )
    generate.add_argument(
        "--guidance-metric",
        default=None,
        metavar="METRIC",
        help="IQA-gradient guidance (paper 3.1) with this differentiable metric",
    )
    generate.add_argument(
        "--guidance-alpha", type=finite_number, default=30.0, help="gradient guidance scale (paper: 30)"
    )
    generate.add_argument(
        "--guidance-window",
        type=_window,
        default=(0.0, 1.0),
        metavar="START,END",
        help="fractions of sampling where gradient guidance acts, 0 <= START < END <= 1",
    )
    generate.add_argument(
        "--guidance-decode-scale",
        type=positive_number,
        default=1.0,
        help="decode the latent downsampled by this factor in (0, 1] for the metric (less memory)",
    )
    generate.add_argument(
        "--no-guidance-checkpointing",
        action="store_true",
        help="no gradient checkpointing through the VAE decoder (faster, more memory)",
    )
    generate.add_argument(
        "--num-images", type=positive_int, default=1, help="images per prompt and quality (seeds seed, seed+1, ...)"
    )
    generate.add_argument(
        "--height",
        type=positive_int,
        default=None,
        help="a multiple of the VAE's scale factor (8 for SD and SDXL); default: the base model's",
    )
    generate.add_argument(
        "--width",
        type=positive_int,
        default=None,
        help="a multiple of the VAE's scale factor (8 for SD and SDXL); default: the base model's",
    )
    generate.add_argument("--batch-size", type=positive_int, default=4)
    generate.add_argument("--out", default="iqa-adapter-output", help="output directory")
    generate.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the images of an earlier run in --out (never mixed with the new ones)",
    )
    generate.set_defaults(func=cmd_generate)

    convert = commands.add_parser("convert-official", help="import an official IQA-Adapter checkpoint")
    convert.add_argument(
        "--checkpoint",
        required=True,
        metavar="FILE_OR_HUB_ID",
        help="ip_adapter.bin / .safetensors / pytorch_model.bin, or a hub repository with --weight-name",
    )
    convert.add_argument(
        "--weight-name", default=None, help="the checkpoint's path inside the --checkpoint repository (or folder)"
    )
    convert.add_argument("--revision", default=None, help="branch, tag or commit of a hub --checkpoint")
    convert.add_argument("--base", required=True, help="base model directory or hub id, or sd15 / sdxl")
    convert.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metric names, in training order (default: read from the file name, "
        "e.g. iqa_adapter_topiq_nr_laion_aes.bin)",
    )
    convert.add_argument(
        "--stats", default=None, help="statistics CSV (layout of CC3M_stats.csv); default: shipped CC3M table"
    )
    convert.add_argument(
        "--encoding-frequencies",
        type=non_negative_int,
        default=None,
        metavar="L",
        help="L of the sinusoidal encoding the checkpoint was trained with, when its projection's "
        "width leaves the layout ambiguous (default: inferred, refused when ambiguous)",
    )
    convert.add_argument("--trust-pickle", action="store_true", help="allow reading torch pickle files")
    convert.add_argument("--out", required=True)
    convert.set_defaults(func=cmd_convert_official)

    info = commands.add_parser("info", help="describe an adapter (a folder or a hub id)")
    info.add_argument("--adapter", required=True, metavar="FOLDER_OR_HUB_ID")
    add_adapter_location_options(info)
    info.set_defaults(func=cmd_info)

    push = commands.add_parser(
        "push",
        help="upload an adapter and a generated model card to the Hugging Face Hub",
        description="Uploads config.json, adapter.safetensors and README.md (a model card: base model, metrics and "
        "their statistics, training recipe, scale and target conventions, usage, and the figures of an "
        "evaluate report given with --evaluation) to the model repository REPO_ID, created when missing.",
    )
    push.add_argument("--adapter", required=True, metavar="FOLDER_OR_HUB_ID")
    add_adapter_location_options(push)
    push.add_argument("--repo-id", required=True, help="the repository to upload to, org/name")
    push.add_argument(
        "--evaluation",
        default=None,
        metavar="REPORT_JSON",
        help="report.json of `iqa-adapter evaluate` on this adapter, summarised in the card",
    )
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--license", default=None, help="the licence the card declares (e.g. apache-2.0)")
    push.add_argument("--token", default=None, help="a Hub token (default: the logged-in one or HF_TOKEN)")
    push.add_argument("--commit-message", default="Upload IQA-Adapter")
    push.set_defaults(func=cmd_push)

    demo = commands.add_parser(
        "demo",
        help="reproduce the paper's main experiments offline on the embedded toy world",
        description="Percentile sweep, RelGain at p99 / p1 on every metric, adapter-scale sweep, negative quality "
        "guidance, gradient guidance and reference-based transfer on the toy world; writes OUT/report.json, "
        "OUT/report.md, OUT/figures/ and OUT/images/.",
    )
    demo.add_argument("--out", default="demo-output")
    demo.add_argument(
        "--retrain",
        action="store_true",
        help="first rebuild every toy model from scratch in OUT/world (about 80 minutes on 2 CPU cores)",
    )
    demo.add_argument("--world", default=None, help="a toy world folder (default: the embedded one)")
    demo.add_argument(
        "--pairs",
        action="store_true",
        help="also make 2,000 toy pairs (p99 / p1, content-filtered) and test whether they teach a small "
        "network to restore real degradations (about 20 more minutes)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a miniature that runs in about 15 seconds on one core (with --retrain: tiny models)",
    )
    add_threads_option(demo)
    demo.set_defaults(func=cmd_demo)

    annotate = commands.add_parser(
        "annotate",
        help="score an image-text dataset with several metrics in one resumable pass",
        description="Score every image of a dataset with several metrics, each image decoded once. Writes "
        "OUT/scores.parquet, OUT/stats.csv and OUT/skipped.csv; run the same command again to resume. "
        "Spread it over GPUs or nodes with `accelerate launch -m iqa_adapter annotate ...`.",
    )
    annotate.add_argument(
        "--data",
        required=True,
        help="folder of images with .txt captions (or captions.jsonl/.csv), a .jsonl/.csv listing, "
        "webdataset shards ('shards/{00000..00009}.tar') or .parquet files",
    )
    annotate.add_argument(
        "--metrics",
        required=True,
        help="comma-separated registry names (`iqa-adapter metrics`); COLUMN=NAME names the score "
        "column, e.g. loda=loda:checkpoints/loda,topiq=pyiqa:topiq_nr",
    )
    annotate.add_argument("--out", required=True, help="output folder (also the resume state)")
    annotate.add_argument(
        "--resize",
        type=_resize,
        default=512,
        help="square side every image is resized to, or 'none' (default 512, as the paper)",
    )
    annotate.add_argument(
        "--resize-mode",
        choices=RESIZE_MODES,
        default=RESIZE_MODES[0],
        help="PIL's bicubic filter, antialiased (default), or bilinear interpolation of the tensor "
        "without antialiasing, as the official scoring resized",
    )
    annotate.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="skip (and list) images with more pixels, unread (default: PIL's limit)",
    )
    annotate.add_argument(
        "--through-vae",
        default=None,
        metavar="MODEL",
        help="score each image as MODEL's VAE reproduces it (encode, decode): the quality a latent diffusion model "
        "on that VAE can learn; a diffusers pipeline folder or hub id (its vae/) or a VAE folder (default: score the "
        "images themselves, as the paper)",
    )
    annotate.add_argument("--batch-size", type=positive_int, default=32)
    annotate.add_argument("--workers", type=non_negative_int, default=2, help="data-loader processes decoding images")
    annotate.add_argument("--chunk-size", type=positive_int, default=1000, help="samples per resumable chunk")
    annotate.add_argument("--device", default=None, help="default: the device accelerate gives this process")
    annotate.add_argument(
        "--metric-option",
        action="append",
        default=[],
        metavar="METRIC.OPTION=VALUE",
        help="an option for one metric, e.g. niqe.params=niqe.safetensors; repeatable",
    )
    add_threads_option(annotate)
    annotate.add_argument("--no-progress", action="store_true")
    annotate.set_defaults(func=cmd_annotate)

    metrics = commands.add_parser("metrics", help="list every available quality metric")
    metrics.set_defaults(func=cmd_metrics)

    niqe_fit = commands.add_parser("niqe-fit", help="fit a NIQE pristine model on a folder of clean images")
    niqe_fit.add_argument("--images", required=True, help="folder of clean, sharp images (not recursive)")
    niqe_fit.add_argument("--out", required=True, help="output .safetensors file")
    niqe_fit.add_argument(
        "--patch-size", type=positive_int, default=96, help="patch side in pixels (standard 96; even, >= 8)"
    )
    niqe_fit.add_argument(
        "--sharpness-threshold",
        type=fraction,
        default=0.75,
        help="keep patches sharper than this fraction (0 to 1) of the image's sharpest patch",
    )
    niqe_fit.set_defaults(func=cmd_niqe_fit)

    for add_commands in command_groups():
        add_commands(commands)
    return parser


def command_groups() -> list:
    """The ``add_commands(subparsers)`` functions of the command groups that live beside their code."""
    from .app.cli import add_commands as app_commands
    from .evaluation.cli import add_commands as evaluation_commands
    from .loda.cli import add_commands as loda_commands
    from .pairs.cli import add_commands as pairs_commands
    from .toy.cli import add_commands as toy_commands
    from .training.cli import add_commands as training_commands

    return [evaluation_commands, pairs_commands, training_commands, loda_commands, toy_commands, app_commands]


def _one_line(error: BaseException) -> str:
    """An error's message on one line (KeyError keeps its message in args[0])."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split()) or type(error).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, ``warning: ...``, without the source line."""
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns its exit code (0 done, 2 a usage or input error, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_request:  # --help, or an argparse error (already printed)
        return exit_request.code if isinstance(exit_request.code, int) else 0
    debug = os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")  # huggingface_hub deprecation noise
        try:
            args.func(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except (ValueError, KeyError, OSError, RuntimeError) as error:
            if debug:
                raise
            print(f"error: {_one_line(error)}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
