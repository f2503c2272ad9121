"""``iqa-adapter evaluate``: the paper's whole evaluation (see :mod:`iqa_adapter.evaluation.run`).

    iqa-adapter evaluate --metrics piqe,sharpness --prompt "a red circle" --seeds 2 --out eval/   # the toy world
    iqa-adapter evaluate --base stabilityai/stable-diffusion-xl-base-1.0 --adapter topiq=adapters/topiq \\
        --adapter laion=adapters/laion --metrics ... --prompts parti.tsv --max-prompts 1600 --seeds 1 \\
        --fid-extractor dinov2 --fid-reference coco/ --clip openai/clip-vit-large-patch14 --out eval/
    accelerate launch --num_processes 8 -m iqa_adapter evaluate ...   # every process takes its share
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _numbers(parse):
    """argparse type: a comma-separated list parsed by ``parse``."""

    def convert(text: str) -> list:
        try:
            values = [parse(part) for part in text.split(",") if part.strip()]
        except (ValueError, argparse.ArgumentTypeError) as error:
            raise argparse.ArgumentTypeError(f"takes comma-separated values, got {text!r} ({error})") from None
        if not values:
            raise argparse.ArgumentTypeError(f"takes comma-separated values, got {text!r}")
        return values

    return convert


def _percent(text: str) -> float:
    """A percentage in (0, 100]."""
    from ..validation import check_number

    return check_number("percent", float(text), 0.0, 100.0, open_minimum=True)


def _named_adapters(entries: list[str]) -> dict[str, str]:
    """``FOLDER`` or ``NAME=FOLDER`` entries as {name: folder}; a bare folder is named after it."""
    named: dict[str, str] = {}
    for entry in entries:
        name, separator, folder = entry.partition("=")
        if not separator:
            name, folder = Path(entry).name or "adapter", entry
        if name in named:
            raise ValueError(f"two adapters are named {name!r}; name them with --adapter NAME=FOLDER")
        named[name] = folder
    return named


def _metric_groups(entries: list[str]) -> dict[str, list[str]]:
    """``NAME=COLUMN,COLUMN`` entries as {name: columns}."""
    groups: dict[str, list[str]] = {}
    for entry in entries:
        name, separator, members = entry.partition("=")
        columns = [column.strip() for column in members.split(",") if column.strip()]
        if not separator or not name.strip() or not columns:
            raise ValueError(f"--metric-group takes NAME=COLUMN,COLUMN, got {entry!r}")
        if name.strip() in groups:
            raise ValueError(f"--metric-group {name.strip()!r} is given twice")
        groups[name.strip()] = columns
    return groups


def read_prompt_options(args) -> list:
    """The prompts of :func:`add_prompt_options`' options: ``--prompt`` texts, then the ``--prompts`` file's records."""
    from .prompts import load_prompts

    prompts: list = list(args.prompt)
    if args.prompts:
        prompts += load_prompts(
            args.prompts,
            format=args.prompt_format,
            categories=args.categories,
            max_prompts=args.max_prompts,
            seed=args.prompt_seed,
            image_root=args.image_root,
        )
    elif args.max_prompts or args.categories:
        raise ValueError("--max-prompts and --categories select from a --prompts file")
    if not prompts:
        raise ValueError("give prompts with --prompt (repeatable) or --prompts FILE")
    return prompts


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """``--prompt``, ``--prompts FILE`` and the options that select from the file (read by :func:`read_prompt_options`)."""
    from ..validation import positive_int, seed

    group = parser.add_argument_group("prompts")
    group.add_argument("--prompt", action="append", default=[], help="a prompt; repeatable")
    group.add_argument(
        "--prompts",
        default=None,
        metavar="FILE",
        help="a prompt set: plain text, PartiPrompts .tsv, DrawBench .csv, GenEval metadata .jsonl or "
        "COCO captions .json",
    )
    group.add_argument(
        "--prompt-format", default="auto", choices=("auto", "text", "parti", "drawbench", "geneval", "coco")
    )
    group.add_argument(
        "--categories",
        type=_numbers(str.strip),
        default=None,
        help="comma-separated categories (PartiPrompts, DrawBench) or GenEval tags to keep",
    )
    group.add_argument("--max-prompts", type=positive_int, default=None, help="a seeded random sample of this many")
    group.add_argument("--prompt-seed", type=seed, default=0, help="seed of the --max-prompts sample")
    group.add_argument("--image-root", default=None, help="COCO: the folder of the images the captions describe")


def cmd_evaluate(args) -> None:
    from ..annotate import metric_columns
    from ..chunks import process_state
    from ..cli_common import comma_list, load_adapter, metric_options, plural, resolve_model_and_sampling, torch_dtype
    from ..pipelines import load_pipeline
    from ..runtime import apply_threads, hide_loading_bars, resolve_device
    from .passes import score_columns
    from .run import EvaluationSettings, Measures, evaluate

    groups = _metric_groups(args.metric_group)
    device = resolve_device(args.device) if args.device else None
    state = process_state(device)
    device = device or str(state.device)
    prompts = read_prompt_options(args)
    toy = resolve_model_and_sampling(args)
    apply_threads(args.threads, toy=toy)
    if args.no_progress:
        hide_loading_bars()
    folders = args.adapter if isinstance(args.adapter, list) else [args.adapter]
    adapters = {name: load_adapter(folder, args) for name, folder in _named_adapters(folders).items()}
    options = metric_options(args.metric_option)
    metrics = score_columns(
        {column: (name, options.get(column, {})) for column, name in metric_columns(comma_list(args.metrics)).items()},
        device,
    )
    settings = EvaluationSettings(
        seeds=args.seeds,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        percentiles=args.percentiles,
        scales=args.scales,
        negative_quality=args.negative_quality or None,
        scale=args.scale,
        relgain_only=args.relgain_only,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
    )
    measures = Measures(
        extractors=args.fid_extractor,
        reference=args.fid_reference,
        reference_resize=args.reference_resize,
        reference_subsets=args.reference_quality_subsets or (),
        subset_metrics=comma_list(args.subset_metrics or ""),
        reference_cache=args.reference_cache,
        clip_model=args.clip,
        prompt_following=not args.no_prompt_following,
        detector=args.detector,
        following_clip=args.following_clip,
        distances=comma_list(args.distances),
        metric_groups=groups,
    )
    report = evaluate(
        args.out,
        load_pipeline=lambda: load_pipeline(args.base, device, torch_dtype(args.dtype, device)),
        base_name=args.base,
        adapters=adapters,
        metrics=metrics,
        prompts=prompts,
        settings=settings,
        measures=measures,
        skip_generation=args.skip_generation,
        device=device,
        progress=not args.no_progress,
    )
    if report is not None:
        print((Path(args.out) / "report.md").read_text())
        print(f"{plural(report['n_images'], 'image')}, {report['seconds']} s; report {Path(args.out) / 'report.json'}")


def add_commands(commands) -> None:
    """Register ``evaluate``."""
    from ..cli_common import add_generation_options
    from ..validation import non_negative_number, positive_int
    from .plan import PERCENTILES, SCALES

    evaluate = commands.add_parser(
        "evaluate",
        help="the paper's whole evaluation of one or several adapters: quality, fidelity, prompt "
        "following, distances between quality levels",
        description="Generate paired images (same prompts and seeds) for the base model and, per adapter, a p1..p99 "
        "sweep, an adapter-scale sweep and negative quality guidance; score them with every --metrics; "
        "optionally measure Frechet distances, CLIP-T/CLIP-I, GenEval's prompt following and the distances "
        "between quality levels. Resumable (run the same command again), shared out under `accelerate "
        "launch -m iqa_adapter evaluate`. Writes OUT/report.json, OUT/report.md, OUT/figures/ and "
        "OUT/images/.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_generation_options(evaluate, adapters="named")
    evaluate.add_argument(
        "--metrics",
        required=True,
        help="comma-separated quality metrics (registry names, or COLUMN=NAME as for annotate)",
    )
    evaluate.add_argument("--metric-option", action="append", default=[], metavar="METRIC.OPTION=VALUE")
    add_prompt_options(evaluate)
    group = evaluate.add_argument_group("conditions")
    group.add_argument("--seeds", type=positive_int, default=4, help="images per prompt and condition")
    group.add_argument(
        "--percentiles",
        type=_numbers(int),
        default=list(PERCENTILES),
        help=f"the percentile sweep (must include 1 and 99; default {','.join(map(str, PERCENTILES))})",
    )
    group.add_argument(
        "--scales",
        type=_numbers(float),
        default=list(SCALES),
        help=f"the adapter-scale sweep at p99 and p1 (default {','.join(f'{s:g}' for s in SCALES)})",
    )
    group.add_argument(
        "--scale",
        type=non_negative_number,
        default=None,
        help="the adapter scale of the percentile sweep (default: each adapter's)",
    )
    group.add_argument(
        "--negative-quality",
        type=non_negative_number,
        default=1.0,
        help="K of the negative-guidance experiment (0: no negative-guidance experiment)",
    )
    group.add_argument(
        "--relgain-only",
        type=_numbers(str.strip),
        default=[],
        metavar="NAMES",
        help="adapters generated at p1 and p99 only: rows of the RelGain matrix (Figure 3a) without "
        "their sweeps, at a fraction of the cost",
    )
    group.add_argument(
        "--metric-group",
        action="append",
        default=[],
        metavar="NAME=COLUMN,COLUMN",
        help="a group of metric columns with a mean column of its own in the RelGain matrix "
        "(e.g. learned=topiq,laion); repeatable",
    )
    group.add_argument("--height", type=positive_int, default=None)
    group.add_argument("--width", type=positive_int, default=None)
    group.add_argument("--batch-size", type=positive_int, default=16, help="images per pipeline call")
    group.add_argument(
        "--chunk-size",
        type=positive_int,
        default=64,
        help="images per resumable chunk (a kill loses at most the unfinished chunks)",
    )
    group.add_argument(
        "--skip-generation",
        action="store_true",
        help="only score and measure the images already generated (refused if some are missing)",
    )
    group = evaluate.add_argument_group("fidelity (paper Table 5)")
    group.add_argument(
        "--fid-extractor",
        action="append",
        default=[],
        metavar="SPEC",
        help="Frechet distance with these features, repeatable: dinov2 (FD-DINOv2), clip, inception "
        "(needs torchvision), dinov2:<hub id or folder>, features:<metric>:<layers>; NAME=SPEC reports it "
        "as NAME",
    )
    group.add_argument(
        "--fid-reference",
        default=None,
        metavar="DATA",
        help="real images for the Frechet distance (any dataset annotate reads)",
    )
    group.add_argument(
        "--reference-resize",
        type=positive_int,
        default=None,
        help="square side the reference images are resized to first (default: as they are)",
    )
    group.add_argument(
        "--reference-quality-subsets",
        type=_numbers(_percent),
        default=None,
        metavar="PERCENTS",
        help="also to the top-k %% quality subsets, e.g. 25,10",
    )
    group.add_argument(
        "--subset-metrics",
        default=None,
        help="comma-separated NR metrics whose mean (z-scored, oriented) ranks the reference images",
    )
    group.add_argument(
        "--reference-cache",
        default=None,
        type=Path,
        help="where reference statistics are cached (default: OUT/reference)",
    )
    group.add_argument(
        "--clip",
        default=None,
        metavar="MODEL",
        help="CLIP-T and CLIP-I with this CLIP (hub id or folder), e.g. openai/clip-vit-large-patch14",
    )
    group = evaluate.add_argument_group("prompt following and distances")
    group.add_argument(
        "--no-prompt-following",
        action="store_true",
        help="skip GenEval's tasks even when the prompts carry GenEval metadata",
    )
    group.add_argument("--detector", default=None, help="open-vocabulary detector of prompt following (hub id/folder)")
    group.add_argument("--following-clip", default=None, help="CLIP of prompt following's colour checks")
    group.add_argument(
        "--distances",
        default="ssim,ms_ssim",
        help="distances between quality levels: ssim, ms_ssim, lpips, dists (pyiqa), "
        "features:<extractor of --fid-extractor>; NAME=SPEC reports one as NAME",
    )
    evaluate.add_argument("--out", required=True)
    evaluate.set_defaults(func=cmd_evaluate)
