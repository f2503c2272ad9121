"""The ``iqa-adapter`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .stats import QualityTargetError
from .toy.world import GUIDANCE_SCALE as TOY_GUIDANCE
from .toy.world import SAMPLING_STEPS as TOY_STEPS

DEFAULT_STEPS = 35
DEFAULT_GUIDANCE = 7.5


def _scale(text: str):
    """``--scale 0.5`` or a per-block JSON dict ``--scale '{"up": {"block_0": [0, 1, 0]}}'``."""
    try:
        return float(text)
    except ValueError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise argparse.ArgumentTypeError(f"--scale takes a number or a JSON dict of per-block scales, got {text!r}")


def _torch_dtype(name: str | None, device: str):
    import torch

    if name is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
              "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in dtypes:
        raise SystemExit(f"error: --dtype must be one of {sorted(dtypes)}")
    return dtypes[name]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _qualities(args) -> tuple[list[dict], str | None]:
    from .targets import parse_quality_assignment

    fixed = dict(parse_quality_assignment(item) for item in args.quality)
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

    start, _, end = args.guidance_window.partition(",")
    metric = create_metric(args.guidance_metric, device=device).eval()
    return IQAGuidance(metric, alpha=args.guidance_alpha, window=(float(start), float(end or 1.0)),
                       decode_scale=args.guidance_decode_scale, checkpointing=not args.no_guidance_checkpointing)


def _resolve_model_and_sampling(args) -> None:
    """Fill in the base model, adapter and sampling settings a call leaves out. Without --base, generate uses the
    embedded toy world: its base model, its sampling settings and, unless --adapter or --no-adapter is given,
    its score adapter (or its reference adapter when --reference is given)."""
    if args.base is not None:
        args.steps = args.steps or DEFAULT_STEPS
        args.guidance = args.guidance if args.guidance is not None else DEFAULT_GUIDANCE
        return
    from .toy.world import shipped_world

    world = shipped_world().check()
    args.base = str(world.base)
    args.steps = args.steps or TOY_STEPS
    args.guidance = args.guidance if args.guidance is not None else TOY_GUIDANCE
    if args.adapter is None and not args.no_adapter:
        args.adapter = str(world.reference_adapter if args.reference else world.adapter)
    print(f"using the embedded toy world ({world.root}); give --base and --adapter for your own models")


def cmd_generate(args) -> None:
    from .adapter import IQAAdapter
    from .generation import generate, save_images, sweep_grid
    from .pipelines import load_pipeline

    device = args.device or _default_device()
    dtype = _torch_dtype(args.dtype, device)
    _resolve_model_and_sampling(args)
    if args.no_adapter:
        if args.quality or args.sweep or args.reference:
            raise ValueError("--quality, --sweep and --reference need an adapter; drop --no-adapter")
        adapter, qualities, sweep_metric = None, None, None
    else:
        if args.adapter is None:
            raise ValueError("give --adapter DIR (or --no-adapter for the base model alone)")
        adapter = IQAAdapter.from_pretrained(args.adapter)
        if adapter.config.condition == "reference":
            if not args.reference or args.quality or args.sweep:
                raise ValueError(f"{args.adapter} is a reference-based adapter: give --reference IMAGE (repeatable), "
                                 "not --quality or --sweep")
            qualities, sweep_metric = None, None
        else:
            if args.reference:
                raise ValueError(f"{args.adapter} is conditioned on quality scores: give --quality, not --reference")
            qualities, sweep_metric = _qualities(args)
            for quality in qualities:  # fail on bad targets before loading a large model
                adapter.z_scores(quality)
    references = {}
    if args.reference:
        from PIL import Image

        references = {"references": [Image.open(path).convert("RGB") for path in args.reference],
                      "negative_reference": Image.open(args.negative_reference).convert("RGB")
                      if args.negative_reference else None}
    iqa_guidance = _iqa_guidance(args, device)
    pipe = load_pipeline(args.base, device, dtype)
    if adapter is not None:
        adapter.attach(pipe, scale=args.scale)
    extra = {}
    if args.init_image:
        from diffusers import AutoPipelineForImage2Image
        from PIL import Image

        pipe = AutoPipelineForImage2Image.from_pipe(pipe)  # the same components, adapter included
        extra = {"image": Image.open(args.init_image).convert("RGB"), "strength": args.strength}
    started = time.perf_counter()
    results = generate(
        pipe, adapter, args.prompt, qualities,
        negative_prompt=args.negative_prompt, negative_quality=args.negative_quality, seed=args.seed,
        num_images=args.num_images, steps=args.steps, guidance=args.guidance, height=args.height,
        width=args.width, batch_size=args.batch_size, iqa_guidance=iqa_guidance, **references, **extra,
    )
    elapsed = time.perf_counter() - started
    paths = save_images(results, args.out, extra={
        "base": args.base, "adapter": args.adapter and str(args.adapter), "reference_files": args.reference,
        "negative_reference_file": args.negative_reference, "init_image": args.init_image,
        "strength": args.strength if args.init_image else None})
    print(f"wrote {len(paths)} images with JSON sidecars to {args.out} ({elapsed:.1f} s)")
    if sweep_metric is not None:
        grid_path = Path(args.out) / f"sweep_{sweep_metric}.png"
        sweep_grid(results, sweep_metric).save(grid_path)
        print(f"wrote the sweep grid {grid_path}")


def load_unet_structure(base: str):
    """The UNet of ``base`` (diffusers directory, hub id, or ``sd15`` / ``sdxl``) on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel

    from .architectures import UNET_CONFIGS, unet_from_config

    if base in UNET_CONFIGS:
        return unet_from_config(base, device="meta")
    try:
        config = UNet2DConditionModel.load_config(base, subfolder="unet")
    except OSError as error:
        raise SystemExit(f"error: cannot read the UNet config of {base!r}: {error}") from None
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def cmd_convert_official(args) -> None:
    from .convert import convert_official
    from .stats import cc3m_stats, load_stats_table

    table = load_stats_table(args.stats) if args.stats else cc3m_stats()
    names = [name.strip() for name in args.metrics.split(",") if name.strip()]
    unknown = [name for name in names if name not in table]
    if unknown:
        raise SystemExit(f"error: no statistics for {unknown} in {args.stats or 'the shipped CC3M table'}; "
                         f"it has: {', '.join(sorted(table))}")
    unet = load_unet_structure(args.base)
    adapter = convert_official(args.checkpoint, unet, [table[name] for name in names],
                               trust_pickle=args.trust_pickle, base_model=args.base)
    adapter.save_pretrained(args.out)
    config = adapter.config
    print(f"converted {args.checkpoint} -> {args.out}: {len(config.layers)} layers, {config.num_tokens} tokens, "
          f"{config.projection} projection, flag={config.flag_feature}, L={config.encoding_frequencies}, "
          f"metrics {', '.join(names)}")


def cmd_info(args) -> None:
    from .config import IQAAdapterConfig

    config = IQAAdapterConfig.load(args.adapter)
    print(f"base model: {config.base_model}  (cross-attention width {config.cross_attention_dim}, "
          f"{len(config.layers)} layers)")
    print(f"projection: {config.projection}, {config.num_tokens} tokens, flag={config.flag_feature}, "
          f"L={config.encoding_frequencies}, default scale {config.default_scale}")
    for metric in config.metrics:
        table = ", ".join(f"p{p:g}={v:.4g}" for p, v in sorted(metric.percentiles.items()) if p in (1, 50, 99))
        direction = "higher" if metric.higher_is_better else "lower"
        print(f"  {metric.name}: mean {metric.mean:.4g}, std {metric.std:.4g}, {direction} is better; {table}")


def _metric_options(items: list[str]) -> dict[str, dict]:
    """``--metric-option niqe.params=FILE`` -> ``{"niqe": {"params": "FILE"}}`` (values stay strings unless numeric)."""
    options: dict[str, dict] = {}
    for item in items:
        target, separator, value = item.partition("=")
        metric, dot, option = target.rpartition(".")
        if not separator or not dot or not metric or not option:
            raise ValueError(f"--metric-option takes METRIC.OPTION=VALUE (e.g. niqe.params=niqe.safetensors), got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.setdefault(metric, {})[option] = parsed if isinstance(parsed, (int, float, bool)) else value
    return options


def _comma_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def cmd_annotate(args) -> None:
    from .annotate import annotate

    resize = None if args.resize.lower() in ("none", "native", "0") else int(args.resize)
    annotate(args.data, _comma_list(args.metrics), args.out, batch_size=args.batch_size, num_workers=args.workers,
             resize=resize, device=args.device, chunk_size=args.chunk_size,
             metric_options=_metric_options(args.metric_option), progress=not args.no_progress)


def cmd_metrics(args) -> None:
    from .metrics import list_metrics

    infos = list_metrics()
    width = max(len(info.name) for info in infos)
    print(f"{'name':{width}s}  {'better':6s}  {'range':>16s}  {'grad':4s}  {'backend':7s}  description")
    for info in infos:
        low, high = info.score_range
        print(f"{info.name:{width}s}  {'higher' if info.higher_is_better else 'lower':6s}  {f'{low:g} .. {high:g}':>16s}  "
              f"{'yes' if info.differentiable else 'no':4s}  {info.backend:7s}  {info.description}")


def cmd_niqe_fit(args) -> None:
    from .metrics.niqe import fit_niqe_folder

    fit = fit_niqe_folder(args.images, args.out, patch_size=args.patch_size,
                          sharpness_threshold=args.sharpness_threshold)
    print(f"fitted NIQE on {fit.patches_used} patches of {fit.images_used} images -> {fit.path}")
    for name, reason in fit.skipped.items():
        print(f"  skipped {name}: {reason}")
    print(f"use it with: --metrics niqe --metric-option niqe.params={fit.path}")


def cmd_evaluate(args) -> None:
    from .adapter import IQAAdapter
    from .annotate import metric_columns
    from .evaluation import EvaluationSettings, evaluate_adapter
    from .metrics import create_metric
    from .pipelines import load_pipeline

    device = args.device or _default_device()
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("give prompts with --prompt (repeatable) or --prompts-file")
    options = _metric_options(args.metric_option)
    metrics = {column: create_metric(name, device=device, **options.get(column, {})).eval()
               for column, name in metric_columns(_comma_list(args.metrics)).items()}
    adapter = IQAAdapter.from_pretrained(args.adapter)
    pipe = load_pipeline(args.base, device, _torch_dtype(args.dtype, device))
    adapter.attach(pipe)
    settings = EvaluationSettings(prompts=prompts, seeds=args.seeds, seed=args.seed, steps=args.steps,
                                  guidance=args.guidance, negative_quality=args.negative_quality, scale=args.scale,
                                  batch_size=args.batch_size)
    report = evaluate_adapter(pipe, adapter, metrics, settings, args.out)
    print((Path(args.out) / "report.md").read_text())
    print(f"{report['n_images']} images, {report['seconds']} s; report {Path(args.out) / 'report.json'}")


def cmd_demo(args) -> None:
    from .demo import DemoSettings, run_demo
    from .toy.world import ToyWorld, WorldSettings, build_world, shipped_world

    started = time.perf_counter()
    if args.retrain:
        world = build_world(Path(args.out) / "world", WorldSettings.miniature() if args.quick else WorldSettings())
    else:
        world = (ToyWorld(Path(args.world)) if args.world else shipped_world()).check()
    run_demo(args.out, world, DemoSettings.quick() if args.quick else DemoSettings())
    print(f"total {time.perf_counter() - started:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iqa-adapter", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="generate images at chosen quality levels")
    generate.add_argument("--base", default=None,
                          help="diffusers model directory or hub id (SD 1.x/2.x, SDXL); default: the embedded toy world")
    generate.add_argument("--adapter", default=None, help="adapter directory (config.json + adapter.safetensors)")
    generate.add_argument("--no-adapter", action="store_true", help="the base model alone (e.g. with gradient guidance)")
    generate.add_argument("--prompt", required=True, action="append", help="prompt; repeat for several")
    generate.add_argument("--negative-prompt", default=None)
    generate.add_argument("--quality", action="append", default=[], metavar="METRIC=TARGET",
                          help="target per metric: p99 (percentile), z2.0 (z-score) or 0.73 (raw value)")
    generate.add_argument("--sweep", default=None, metavar="METRIC=T1,T2,...",
                          help="generate one image per target of this metric and a labelled grid")
    generate.add_argument("--scale", type=_scale, default=None,
                          help="adapter scale lambda (default: the adapter's, 0.5) or a per-block JSON dict")
    generate.add_argument("--negative-quality", type=float, nargs="?", const=1.0, default=None, metavar="K",
                          help="negative quality guidance: unconditional branch gets -K*q (K defaults to 1.0)")
    generate.add_argument("--reference", action="append", default=[], metavar="IMAGE",
                          help="reference-based adapters: transfer this image's quality (repeatable)")
    generate.add_argument("--negative-reference", default=None, metavar="IMAGE",
                          help="reference-based adapters: an image whose quality to steer away from (CFG branch)")
    generate.add_argument("--init-image", default=None, metavar="IMAGE", help="img2img: start from this image")
    generate.add_argument("--strength", type=float, default=0.6, help="img2img: how much of the image to redo")
    generate.add_argument("--guidance-metric", default=None, metavar="METRIC",
                          help="IQA-gradient guidance (paper 3.1) with this differentiable metric")
    generate.add_argument("--guidance-alpha", type=float, default=30.0, help="gradient guidance scale (paper: 30)")
    generate.add_argument("--guidance-window", default="0,1", metavar="START,END",
                          help="fractions of sampling where gradient guidance acts")
    generate.add_argument("--guidance-decode-scale", type=float, default=1.0,
                          help="decode the latent downsampled by this factor for the metric (less memory)")
    generate.add_argument("--no-guidance-checkpointing", action="store_true",
                          help="no gradient checkpointing through the VAE decoder (faster, more memory)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--steps", type=int, default=None,
                          help=f"sampling steps (default: {DEFAULT_STEPS}; the toy world's {TOY_STEPS} without --base)")
    generate.add_argument("--guidance", type=float, default=None,
                          help=f"CFG scale (default: {DEFAULT_GUIDANCE}; the toy world's {TOY_GUIDANCE} without --base)")
    generate.add_argument("--num-images", type=int, default=1, help="images per prompt and quality (seeds seed, seed+1, ...)")
    generate.add_argument("--height", type=int, default=None)
    generate.add_argument("--width", type=int, default=None)
    generate.add_argument("--batch-size", type=int, default=4)
    generate.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    generate.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: fp16 on GPU)")
    generate.add_argument("--out", default="iqa-adapter-output", help="output directory")
    generate.set_defaults(func=cmd_generate)

    convert = commands.add_parser("convert-official", help="import an official IQA-Adapter checkpoint")
    convert.add_argument("--checkpoint", required=True, help="ip_adapter.bin / .safetensors / pytorch_model.bin")
    convert.add_argument("--base", required=True, help="base model directory or hub id, or sd15 / sdxl")
    convert.add_argument("--metrics", required=True, help="comma-separated metric names, in training order")
    convert.add_argument("--stats", default=None, help="statistics CSV (layout of CC3M_stats.csv); default: shipped CC3M table")
    convert.add_argument("--trust-pickle", action="store_true", help="allow reading torch pickle files")
    convert.add_argument("--out", required=True)
    convert.set_defaults(func=cmd_convert_official)

    info = commands.add_parser("info", help="describe an adapter directory")
    info.add_argument("--adapter", required=True)
    info.set_defaults(func=cmd_info)

    demo = commands.add_parser(
        "demo", help="reproduce the paper's main experiments offline on the embedded toy world",
        description="Percentile sweep, RelGain at p99 / p1 on every metric, adapter-scale sweep, negative quality "
                    "guidance, gradient guidance and reference-based transfer on the toy world; writes OUT/report.json, "
                    "OUT/report.md, OUT/figures/ and OUT/images/.")
    demo.add_argument("--out", default="demo-output")
    demo.add_argument("--retrain", action="store_true",
                      help="first rebuild every toy model from scratch in OUT/world (about an hour on 2 CPU cores)")
    demo.add_argument("--world", default=None, help="a toy world folder (default: the embedded one)")
    demo.add_argument("--quick", action="store_true", help="a seconds-long miniature (with --retrain: tiny models)")
    demo.set_defaults(func=cmd_demo)

    annotate = commands.add_parser(
        "annotate", help="score an image-text dataset with several metrics in one resumable pass",
        description="Score every image of a dataset with several metrics, each image decoded once. Writes "
                    "OUT/scores.parquet, OUT/stats.csv and OUT/skipped.csv; run the same command again to resume. "
                    "Spread it over GPUs or nodes with `accelerate launch -m iqa_adapter annotate ...`.")
    annotate.add_argument("--data", required=True,
                          help="folder of images with .txt captions (or captions.jsonl/.csv), a .jsonl/.csv listing, "
                               "webdataset shards ('shards/{00000..00009}.tar') or .parquet files")
    annotate.add_argument("--metrics", required=True,
                          help="comma-separated registry names (`iqa-adapter metrics`); COLUMN=NAME names the score "
                               "column, e.g. loda=loda:checkpoints/loda,topiq=pyiqa:topiq_nr")
    annotate.add_argument("--out", required=True, help="output folder (also the resume state)")
    annotate.add_argument("--resize", default="512", help="square side every image is resized to, or 'none' (default 512, as the paper)")
    annotate.add_argument("--batch-size", type=int, default=32)
    annotate.add_argument("--workers", type=int, default=2, help="data-loader processes decoding images")
    annotate.add_argument("--chunk-size", type=int, default=1000, help="samples per resumable chunk")
    annotate.add_argument("--device", default=None, help="default: the device accelerate gives this process")
    annotate.add_argument("--metric-option", action="append", default=[], metavar="METRIC.OPTION=VALUE",
                          help="an option for one metric, e.g. niqe.params=niqe.safetensors; repeatable")
    annotate.add_argument("--no-progress", action="store_true")
    annotate.set_defaults(func=cmd_annotate)

    evaluate = commands.add_parser(
        "evaluate", help="the paper's experiments for an adapter: percentile sweep, RelGain, scale sweep, negative guidance",
        description="Generate paired images (same prompts and seeds) for the base model, a p1..p99 sweep, an adapter-"
                    "scale sweep and negative quality guidance; score them with every --metrics; write OUT/report.json, "
                    "OUT/report.md, OUT/figures/*.png and every image under OUT/images/ with a CSV.")
    evaluate.add_argument("--base", required=True, help="diffusers model directory or hub id")
    evaluate.add_argument("--adapter", required=True, help="adapter directory")
    evaluate.add_argument("--metrics", required=True,
                          help="comma-separated evaluation metrics (registry names, or COLUMN=NAME as for annotate)")
    evaluate.add_argument("--metric-option", action="append", default=[], metavar="METRIC.OPTION=VALUE")
    evaluate.add_argument("--prompt", action="append", default=[], help="repeatable")
    evaluate.add_argument("--prompts-file", default=None, help="one prompt per line")
    evaluate.add_argument("--seeds", type=int, default=4, help="images per prompt and condition")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    evaluate.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    evaluate.add_argument("--scale", type=float, default=None, help="the adapter scale of the sweeps (default: the adapter's)")
    evaluate.add_argument("--negative-quality", type=float, default=1.0, help="K of the negative-guidance experiment")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--dtype", default=None)
    evaluate.add_argument("--out", required=True)
    evaluate.set_defaults(func=cmd_evaluate)

    metrics = commands.add_parser("metrics", help="list every available quality metric")
    metrics.set_defaults(func=cmd_metrics)

    niqe_fit = commands.add_parser("niqe-fit", help="fit a NIQE pristine model on a folder of clean images")
    niqe_fit.add_argument("--images", required=True, help="folder of clean, sharp images (not recursive)")
    niqe_fit.add_argument("--out", required=True, help="output .safetensors file")
    niqe_fit.add_argument("--patch-size", type=int, default=96, help="patch side in pixels (standard 96; even, >= 8)")
    niqe_fit.add_argument("--sharpness-threshold", type=float, default=0.75,
                          help="keep patches sharper than this fraction of the image's sharpest patch")
    niqe_fit.set_defaults(func=cmd_niqe_fit)

    for add_commands in command_groups():
        add_commands(commands)
    return parser


def command_groups() -> list:
    """The ``add_commands(subparsers)`` functions of the command groups that live beside their code."""
    from .loda.cli import add_commands as loda_commands
    from .toy.cli import add_commands as toy_commands
    from .training.cli import add_commands as training_commands

    return [training_commands, loda_commands, toy_commands]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyError as error:  # unknown names: the message is the first argument
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    except (QualityTargetError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
