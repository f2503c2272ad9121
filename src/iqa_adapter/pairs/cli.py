"""``iqa-adapter pairs``: paired low/high-quality datasets (see :mod:`iqa_adapter.pairs.generate`).

    iqa-adapter pairs --prompt "a red circle on the left on a plain blue background" --seeds 4 --adapter toy:cnniqa \\
        --high cnniqa=p99 --low cnniqa=p1,p10 --out pairs/                                     # the toy world
    iqa-adapter pairs --base stabilityai/stable-diffusion-xl-base-1.0 --adapter adapters/topiq \\
        --metrics topiq_nr=pyiqa:topiq_nr --prompts parti.tsv --seeds 2 --high topiq_nr=p99 \\
        --low topiq_nr=p1,p5 --feature-extractor dinov2 --clip openai/clip-vit-large-patch14 \\
        --layout webdataset --out pairs/
    accelerate launch --num_processes 8 -m iqa_adapter pairs ...   # every process takes its share
"""

from __future__ import annotations

import argparse
from pathlib import Path

NONE_WORDS = ("none", "off")


def _targets(entries: list[str], option: str) -> dict[str, list[str]]:
    """``METRIC=T1,T2`` entries as {metric: [targets]}; a metric given twice is an error."""
    from ..targets import parse_quality_assignment

    targets: dict[str, list[str]] = {}
    for entry in entries:
        metric, values = parse_quality_assignment(entry)
        if metric in targets:
            raise ValueError(
                f"{option} gives {metric!r} twice; give it once (several levels: {option} {metric}=p1,p10)"
            )
        targets[metric] = [value.strip() for value in values.split(",") if value.strip()]
    return targets


def _high(entries: list[str]) -> dict[str, str]:
    if not entries:
        raise ValueError("give the high-quality targets with --high METRIC=TARGET (e.g. --high cnniqa=p99)")
    high = _targets(entries, "--high")
    several = [metric for metric, targets in high.items() if len(targets) != 1]
    if several:
        raise ValueError(
            f"--high takes one target per metric, got {', '.join(several)} with several; the levels "
            "of the degraded images go to --low"
        )
    return {metric: targets[0] for metric, targets in high.items()}


def _optional(convert):
    """argparse type: ``convert(text)``, or None for ``none`` (the check is off)."""

    def parse(text: str):
        return None if text.strip().lower() in NONE_WORDS else convert(text)

    return parse


def _reference_levels(args, toy: bool):
    """The reference adapter and one level per ``--reference-degraded`` image, read before any model is loaded."""
    from ..adapter import IQAAdapter
    from ..images import open_image
    from .generate import reference_levels

    if not args.reference_degraded:
        if args.reference_adapter:
            raise ValueError("--reference-adapter goes with --reference-degraded IMAGE")
        return None, []
    folder = args.reference_adapter
    if folder is None and toy:
        from ..toy.world import shipped_world

        folder = shipped_world().reference_adapter
    if folder is None:
        raise ValueError("--reference-degraded needs a reference-based adapter: give --reference-adapter DIR")
    images = {}
    for path in args.reference_degraded:
        name = f"reference_{Path(path).stem}"
        if name in images:
            raise ValueError(f"two --reference-degraded images are named {Path(path).stem!r}; rename one")
        images[name] = open_image(path, name=f"--reference-degraded {path!r}")
    return IQAAdapter.from_pretrained(folder), reference_levels(images)


def _score_specs(args, adapter, toy: bool) -> dict[str, tuple[str, dict]]:
    """``{column: (registry name, options)}``: the ``--metrics`` columns plus one per metric the adapter is conditioned
    on (on the toy world, its own models; elsewhere the metric's name as a registry name)."""
    from ..annotate import metric_columns
    from ..cli_common import comma_list, metric_options

    specs = {column: (name, {}) for column, name in metric_columns(comma_list(args.metrics or "")).items()}
    if toy:
        from ..demo import demo_metric_specs
        from ..toy.world import shipped_world

        known = demo_metric_specs(shipped_world())
        specs.update((name, known[name]) for name in adapter.metric_names if name not in specs and name in known)
    specs.update((name, (name, {})) for name in adapter.metric_names if name not in specs)
    options = metric_options(args.metric_option)
    return {column: (name, {**defaults, **options.get(column, {})}) for column, (name, defaults) in specs.items()}


def _following_scorer(args, prompts: list, toy: bool, device: str):
    """The toy world's readers for prompts that name their toy scene, GenEval's tasks for GenEval prompts, else
    none (``--no-prompt-following``: none)."""
    metadata = [getattr(prompt, "metadata", None) or {} for prompt in prompts]
    if args.no_prompt_following or not all(metadata):
        return None
    if toy and all("toy_scene" in entry for entry in metadata):
        from ..toy.caption_check import ToyCaptionScorer

        return ToyCaptionScorer()
    if all("tag" in entry for entry in metadata):
        from ..evaluation.prompt_following import GenEvalScorer

        options = {key: value for key, value in (("detector", args.detector), ("clip", args.following_clip)) if value}
        return GenEvalScorer(device=device, **options)
    return None


def _pair_settings(args):
    from .generate import PairSettings

    return PairSettings(
        seeds=args.seeds,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        scale=args.scale,
        negative_quality=args.negative_quality,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        layout=args.layout,
        save_dropped=args.save_dropped,
    )


def _content_filter(args, prompts: list, toy: bool, device: str):
    from .filter import ContentFilter, FilterSettings

    settings = FilterSettings(
        ssim_side=args.ssim_side,
        ssim_blur=args.ssim_blur,
        min_ssim=args.min_ssim,
        features=args.feature_extractor,
        min_feature_similarity=args.min_feature_similarity,
        clip=args.clip,
        max_clip_t_drop=args.max_clip_t_drop,
        min_degradation=args.min_degradation,
    )
    return ContentFilter(settings, _following_scorer(args, prompts, toy, device), device=device)


def cmd_pairs(args) -> None:
    from ..chunks import process_state
    from ..cli_common import load_adapter, plural, resolve_model_and_sampling, torch_dtype
    from ..evaluation.cli import read_prompt_options
    from ..evaluation.passes import score_columns
    from ..pipelines import load_pipeline
    from ..runtime import apply_threads, hide_loading_bars, resolve_device
    from .generate import check_request, make_pairs, quality_levels

    device = resolve_device(args.device) if args.device else None
    device = device or str(process_state(device).device)
    prompts = read_prompt_options(args)
    toy = resolve_model_and_sampling(args)
    apply_threads(args.threads, toy=toy)
    if args.no_progress:
        hide_loading_bars()
    high = _high(args.high)
    adapter = load_adapter(args.adapter, args)
    reference_adapter, references = _reference_levels(args, toy)
    levels = quality_levels(_targets(args.low, "--low")) if args.low else []
    levels += references
    specs = _score_specs(args, adapter, toy)
    check_request(adapter, high, levels, specs, reference_adapter, args.out)
    settings, content_filter = _pair_settings(args), _content_filter(args, prompts, toy, device)
    metrics = score_columns(specs, device)
    pipe = load_pipeline(args.base, device, torch_dtype(args.dtype, device))
    summary = make_pairs(
        pipe,
        adapter,
        prompts,
        args.out,
        high=high,
        levels=levels,
        metrics=metrics,
        reference_adapter=reference_adapter,
        settings=settings,
        content_filter=content_filter,
        device=device,
        progress=not args.no_progress,
    )
    if summary is not None:
        reasons = ", ".join(f"{reason} {count}" for reason, count in summary["drop_reasons"].items()) or "none"
        print(
            f"kept {summary['kept']} of {plural(summary['made'], 'pair')} ({summary['kept_share']:.0%}); dropped "
            f"for: {reasons}; {Path(args.out) / 'pairs.json'}, {Path(args.out) / 'index.csv'}"
        )


def add_commands(commands) -> None:
    """Register ``pairs``."""
    from ..cli_common import add_generation_options
    from ..distortions import MAX_BLUR_SIGMA
    from ..evaluation.cli import add_prompt_options
    from ..validation import (
        check_int,
        check_number,
        cli_type,
        finite_number,
        non_negative_number,
        positive_int,
    )
    from .filter import SSIM_WINDOW
    from .writers import LAYOUTS

    similarity = cli_type(check_number, -1.0, 1.0)

    pairs = commands.add_parser(
        "pairs",
        help="paired low/high-quality images from the same noise (IQA-Adapter as a degradation model)",
        description="For every prompt and seed, generate the high-quality image (--high) and degraded versions "
        "(--low levels, or --reference-degraded images through a reference-based adapter) from the same "
        "initial noise; score both images with every metric, drop pairs whose content changed (content "
        "filter) and write the rest as BasicSR paired folders (OUT/hq, OUT/lq) or webdataset shards, "
        "with OUT/index.csv (every pair, kept or not, and why) and OUT/pairs.json. Resumable (run the "
        "same command again), shared out under `accelerate launch -m iqa_adapter pairs`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_generation_options(pairs)
    add_prompt_options(pairs)
    group = pairs.add_argument_group("pairs")
    group.add_argument("--seeds", type=positive_int, default=1, help="seeds per prompt: --seed, --seed + 1, ...")
    group.add_argument(
        "--high",
        action="append",
        default=[],
        metavar="METRIC=TARGET",
        help="target of the high-quality image per metric (p99, z2.0 or a raw value), repeatable; "
        "metrics left out take the adapter's default target",
    )
    group.add_argument(
        "--low",
        action="append",
        default=[],
        metavar="METRIC=T1,T2,...",
        help="targets of the degraded images, one level per target (several metrics: the same number "
        "of targets, or one); metrics left out keep the --high target",
    )
    group.add_argument(
        "--reference-degraded",
        action="append",
        default=[],
        metavar="IMAGE",
        help="a degraded image whose distortion the reference-based adapter transfers: one more level, repeatable",
    )
    group.add_argument(
        "--reference-adapter",
        default=None,
        metavar="DIR",
        help="the reference-based adapter of --reference-degraded (default on the toy world: its own)",
    )
    group.add_argument(
        "--scale", type=non_negative_number, default=None, help="adapter scale of both images (default: each adapter's)"
    )
    group.add_argument(
        "--negative-quality",
        type=non_negative_number,
        default=None,
        metavar="K",
        help="negative quality guidance: the unconditional branch gets -K*q",
    )
    group.add_argument("--height", type=positive_int, default=None)
    group.add_argument("--width", type=positive_int, default=None)
    group.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metrics scored on both images besides the adapter's own (registry names "
        "or COLUMN=NAME); COLUMN=NAME also says how to score an adapter metric whose name is not a "
        "registry name",
    )
    group.add_argument("--metric-option", action="append", default=[], metavar="METRIC.OPTION=VALUE")
    group = pairs.add_argument_group("content filter (every value is kept in index.csv)")
    group.add_argument(
        "--min-ssim",
        type=_optional(similarity),
        default=0.5,
        help="drop pairs whose blurred, downsampled copies have a lower SSIM (default 0.5; none: off)",
    )
    group.add_argument(
        "--ssim-side",
        type=cli_type(check_int, SSIM_WINDOW, parse=int),
        default=64,
        help="the copies' shorter side in pixels, at most (default 64; smaller images stay as they are)",
    )
    group.add_argument(
        "--ssim-blur",
        type=cli_type(check_number, 0.0, MAX_BLUR_SIGMA),
        default=0.5,
        help="Gaussian sigma in pixels of the copies, 0 to 3 (default 0.5)",
    )
    group.add_argument(
        "--feature-extractor",
        default=None,
        metavar="SPEC",
        help="also compare deep features: dinov2, clip, features:<metric>:<layers>",
    )
    group.add_argument(
        "--min-feature-similarity",
        type=similarity,
        default=0.5,
        help="drop pairs whose features' cosine similarity is lower (default 0.5)",
    )
    group.add_argument(
        "--clip",
        default=None,
        metavar="MODEL",
        help="also compare CLIP-T (image-prompt) with this CLIP, e.g. openai/clip-vit-large-patch14",
    )
    group.add_argument(
        "--max-clip-t-drop",
        type=non_negative_number,
        default=3.0,
        help="drop pairs whose degraded image's CLIP-T is this many points lower (default 3)",
    )
    group.add_argument(
        "--min-degradation",
        type=_optional(finite_number),
        default=0.0,
        metavar="Z",
        help="drop pairs whose degraded image is not worse by this many training-set standard deviations "
        "on every metric its level lowers (default 0: worse at all; none: off)",
    )
    group.add_argument(
        "--no-prompt-following",
        action="store_true",
        help="skip the prompt-following check (toy readers for toy scenes, GenEval's tasks for GenEval prompts)",
    )
    group.add_argument("--detector", default=None, help="open-vocabulary detector of GenEval's tasks (hub id/folder)")
    group.add_argument("--following-clip", default=None, help="CLIP of GenEval's colour checks")
    group = pairs.add_argument_group("output")
    group.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=LAYOUTS[0],
        help="folder: BasicSR's OUT/hq/NAME.png + OUT/lq/NAME.png; webdataset: OUT/shards/*.tar",
    )
    group.add_argument("--save-dropped", action="store_true", help="also write the dropped pairs, under OUT/dropped/")
    group.add_argument("--batch-size", type=positive_int, default=16, help="images per pipeline call")
    group.add_argument(
        "--chunk-size",
        type=positive_int,
        default=16,
        help="prompt x seed groups per resumable chunk (a kill loses at most the unfinished chunks)",
    )
    group.add_argument("--out", required=True)
    pairs.set_defaults(func=cmd_pairs)
