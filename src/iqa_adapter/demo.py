"""``iqa-adapter demo``: the paper's main experiments, reproduced offline on the embedded toy world.

The toy world (:mod:`iqa_adapter.toy.world`) is a small text-to-image model, a zoo of learned toy quality
models (a tiny LoDa, CNNIQA, an aesthetics model, the panel's judge, a distortion classifier), NIQE and the
classical metrics, and IQA-Adapters, all trained by this project's own commands on procedural captioned images.
The demo runs, with fixed prompts and seeds:

1. :func:`iqa_adapter.evaluation.evaluate` for the main adapter (conditioned on CNNIQA and the aesthetics model,
   the paper's "TOPIQ + LAION-AES") and one adapter per learned model, through the same code as a real model:
   percentile sweep (paper Figures 1, 4, 10, 16, 17), the RelGain matrix at p99 and p1 with learned and classical
   group means (Figure 3a, section 5.1), adapter-scale sweep (Figure 13), negative quality guidance (Figure 8),
   caption following read by the toy readers (its GenEval, :class:`~iqa_adapter.toy.caption_check.ToyCaptionScorer`),
   a Frechet distance with the toy LoDa's features to clean rendered scenes (Table 5), and the distances between
   quality levels (Figure 11);
2. the zoo's held-out agreement with its targets (Table 2);
3. the toy panel (section 4.3.1, Figures 3b and 3c): simulated participants vote on pairs of base, p1, p50 and
   p99 images by the scores of a judge that no adapter was conditioned on;
4. IQA-gradient guidance (section 3.1) on the toy LoDa, without adapter, RelGain on every metric beside the
   adapters' (Figure 9: the paper finds target-only gains for guidance, cross-metric gains for the adapter);
5. reference-based transfer: references degraded with each distortion family. ``match`` is the fraction of
   generated images in which the zoo's distortion classifier finds the reference's family; ``content_leak`` the
   fraction whose object takes the reference's colour instead of the prompt's (read by
   :mod:`iqa_adapter.toy.caption_check`); ``separability`` how well a linear probe tells the families apart in
   the reference features;
6. with ``pairs`` (``demo --pairs``), IQA-Adapter as a degradation model (paper section 5.1, supplement 13): toy
   pairs from the CNNIQA adapter at p99 and p1, filtered for content (:mod:`iqa_adapter.pairs`), and the restoration
   experiment of :mod:`iqa_adapter.pairs.restoration` (a small network trained on them, on real pairs and not at
   all, tested on held-out real degradations).

The numbers are whatever the models produce; ``report.json`` and ``report.md`` say which claims hold.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .adapter import IQAAdapter
from .distortions import FAMILIES, FAMILY_GROUP, FAMILY_GROUPS, distort
from .evaluation import EvaluationSettings, Measures, evaluate, figures, relgain
from .evaluation.passes import ScoreColumn, score_columns, score_tensors
from .evaluation.preference import PairVotes, bradley_terry, simulate_votes, win_rates
from .evaluation.prompts import Prompt
from .evaluation.report import report_markdown
from .generation import generate
from .grid import image_grid
from .guidance import IQAGuidance
from .images import rgb_tensor, to_8bit, to_pil_images
from .io_utils import atomic_write, write_json
from .metrics import QualityMetric, create_metric
from .metrics.learned import LearnedModel
from .pairs import ContentFilter, FilterSettings, PairSettings, make_pairs, quality_levels
from .pairs.restoration import ARMS, RestorationSettings, restoration_experiment
from .pipelines import vae_round_trip
from .toy.caption_check import ToyCaptionScorer, read_object
from .toy.scenes import Scene, render_scene, render_scenes, scene_for
from .toy.world import CONDITIONING_MODELS, GUIDANCE_SCALE, SAMPLING_STEPS, ToyWorld, shipped_world
from .toy.zoo import CLASSES, CLEAN, linear_probe_accuracy, make_zoo_data

PROMPT_SEED = 5000  # toy scenes of the demo prompts: a seed no model's data uses
PAIRS_SEED = 5300  # toy scenes of the pairs experiment's prompts
REFERENCE_SEED = 5100  # clean scenes that become the references (and, +1, the Frechet distance's real images)
SEPARABILITY_SEED = 5200  # labelled degraded scenes of the reference-feature probe
REFERENCE_LEVEL = 0.8  # distortion level of the references (1 = strongest)
LEARNED = ("loda", "cnniqa", "aesthetic")  # the learned models: conditioning and measuring
CLASSICAL = ("niqe", "piqe", "sharpness", "noise", "blockiness", "colorfulness", "contrast")
PANEL_CONDITIONS = ("base", "p1", "p50", "p99")  # what the panel compares (the paper's subjective study)
PAIRED_KEYS = ("paired_match", "paired_group_match")  # reference transfer against the clean reference


@dataclass
class DemoSettings:
    """How much the demo generates; ``quick`` shrinks everything for the test suite."""

    prompts: int = 8
    seeds: int = 4
    steps: int = SAMPLING_STEPS
    guidance: float = GUIDANCE_SCALE
    guidance_alpha: float = 30.0
    reference_scenes: int = 256  # clean rendered scenes, the Frechet distance's reference set
    separability_images: int = 40  # per family, for the reference features' linear probe
    participants: int = 12  # simulated participants per image pair (the paper: at least 10, 12.1 on average)
    participant_noise: float = 3.0  # each participant's noise on the panel judge's score (points of 0-100)
    same_margin: float = 1.0  # a participant says "same" below this difference
    pair_prompts: int = 1000  # pairs experiment (demo --pairs): single-object prompts ...
    pair_seeds: int = 2  # ... x seeds, one p1 image per p99 image
    # the adapter that makes the pairs (ToyWorld.named_adapter): the CNNIQA one, whose p1 adds distortions with
    # the layout kept; the main adapter's aesthetics axis moves the object at p1 (content, not quality)
    pair_adapter: str = "cnniqa"
    pair_filter: FilterSettings | None = field(default_factory=FilterSettings)  # None: keep every pair (quick)
    restoration: RestorationSettings = field(default_factory=RestorationSettings)

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(
            prompts=2,
            seeds=1,
            steps=2,
            reference_scenes=8,
            separability_images=4,
            pair_prompts=4,
            pair_seeds=1,
            pair_filter=None,
            restoration=RestorationSettings.miniature(),
        )


def demo_scenes(count: int) -> list[Scene]:
    """Single-object toy scenes with every attribute in the caption (their captions are the prompts)."""
    return [scene_for(PROMPT_SEED, index, kind="single", full_caption=True) for index in range(count)]


def demo_metric_specs(world: ToyWorld) -> dict[str, tuple[str, dict]]:
    """Every metric the demo evaluates, as (registry name, options): the learned models (the toy LoDa and the
    zoo's CNNIQA and aesthetics model), then NIQE fitted on clean toy images and the other classical metrics."""
    specs = {name: (world.metric_spec(name), {}) for name in LEARNED}
    specs["niqe"] = ("niqe", {"params": str(world.niqe)})
    specs.update((name, (name, {})) for name in CLASSICAL if name != "niqe")
    return specs


def demo_metrics(world: ToyWorld, device: str | torch.device = "cpu") -> dict[str, QualityMetric]:
    """The metrics of :func:`demo_metric_specs`, built."""
    return {
        column: create_metric(name, device=device, **options).eval()
        for column, (name, options) in demo_metric_specs(world).items()
    }


def write_reference_scenes(folder: Path, count: int) -> Path:
    """Clean rendered single-object scenes with captions (the Frechet distance's real images), written once."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = folder / f"{index:05d}.png"
        if not path.exists():
            scene = scene_for(REFERENCE_SEED + 1, index, kind="single", full_caption=True)
            atomic_write(
                path,
                lambda temporary, scene=scene: Image.fromarray(render_scene(scene, 32)).save(temporary, format="PNG"),
            )
            (folder / f"{index:05d}.txt").write_text(scene.caption)
    return folder


def _pixels(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack(
        [
            torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
            for image in images
        ]
    )


def _announce(step: str, progress: bool) -> None:
    """One line on stderr before a step whose progress bar only says "images"."""
    if progress:
        print(f"demo: {step}", file=sys.stderr, flush=True)


def _save_grid(images: list[Image.Image], columns: int, path: Path, **labels) -> str:
    grid = image_grid(images, columns=columns, min_cell=96, **labels)
    atomic_write(path, lambda temporary: grid.save(temporary, format="PNG"))
    return path.name


# ---------------------------------------------------------------- gradient guidance


def gradient_guidance_experiment(
    pipe,
    metrics: dict[str, QualityMetric],
    prompts: list[str],
    settings: DemoSettings,
    out_dir: Path,
    adapter_relgain: dict[str, float],
    progress: bool = False,
) -> dict:
    """Base model with and without IQA-gradient guidance on the toy LoDa: RelGain on every metric."""
    _announce("gradient guidance: the base model without, then with, the toy LoDa's gradient", progress)
    common = dict(
        seed=0, num_images=settings.seeds, steps=settings.steps, guidance=settings.guidance, progress=progress
    )
    base = generate(pipe, None, prompts, **common)
    guidance = IQAGuidance(metrics["loda"], alpha=settings.guidance_alpha)
    guided = generate(pipe, None, prompts, iqa_guidance=guidance, **common)
    base_scores = {name: score_tensors(metric, [rgb_tensor(r.image) for r in base]) for name, metric in metrics.items()}
    guided_scores = {
        name: score_tensors(metric, [rgb_tensor(r.image) for r in guided]) for name, metric in metrics.items()
    }
    gains = {
        name: relgain(base_scores[name], guided_scores[name], metric.higher_is_better)
        for name, metric in metrics.items()
    }
    others = [name for name in metrics if name != "loda"]
    figure = _save_grid(
        [image for pair in zip(base, guided) for image in (pair[0].image, pair[1].image)],
        2,
        out_dir / "figures" / "gradient_guidance.png",
        column_labels=["base", "LoDa guidance"],
    )
    return {
        "target": "loda",
        "alpha": settings.guidance_alpha,
        "relgain": gains,
        "adapter_relgain_p99": adapter_relgain,
        "improved_other_metrics": sum(gains[name] > 0 for name in others),
        "adapter_improved_other_metrics": sum(adapter_relgain.get(name, 0) > 0 for name in others),
        "figure": f"figures/{figure}",
    }


# ---------------------------------------------------------------- reference transfer


def reference_transfer_experiment(
    pipe,
    adapter: IQAAdapter,
    classifier: LearnedModel,
    scenes: list[Scene],
    settings: DemoSettings,
    out_dir: Path,
    progress: bool = False,
) -> dict:
    """One degraded reference per family (a scene whose object colour differs from every prompt's); the zoo's
    distortion classifier names the family it sees in each generated image."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    encoder = adapter.reference_encoder()
    labels = list(classifier.config.classes)
    prompt_colours = {scene.objects[0].colour for scene in scenes}
    reference_scene = next(
        scene
        for index in range(1000)
        for scene in [scene_for(REFERENCE_SEED, index, kind="single", full_caption=True)]
        if scene.objects[0].colour not in prompt_colours
    )
    clean = render_scenes([reference_scene], size)
    generator = torch.Generator().manual_seed(REFERENCE_SEED)

    round_trip_match = _round_trip_match(pipe, classifier, scenes, settings.seeds, size)
    sharpness = create_metric("sharpness").eval()  # reads detail without the classifier
    clean_reference_sharpness = float(sharpness(clean)[0])
    clean_images_sharpness = None  # of the images made with the clean reference
    family_columns = [labels.index(family) for family in FAMILIES]
    results: dict[str, dict] = {}
    clean_evidence = None  # the families' log-probabilities on the images made with the clean reference
    grid_images, rows = [], []
    for family in [CLEAN, *FAMILIES]:
        _announce(f"reference transfer: a {family} reference", progress)
        reference = clean if family == CLEAN else distort(clean, family, REFERENCE_LEVEL, generator)
        reference_image = to_pil_images(reference)[0]
        generated = generate(
            pipe,
            adapter,
            [scene.caption for scene in scenes],
            references=[reference_image],
            reference_encoder=encoder,
            seed=0,
            num_images=settings.seeds,
            steps=settings.steps,
            guidance=settings.guidance,
            progress=progress,
        )
        pixels = _pixels([result.image for result in generated])
        evidence = family_log_probabilities(classifier, pixels)
        images_sharpness = float(sharpness(pixels).mean())
        predicted = [labels[index] for index in evidence.argmax(dim=1).tolist()]
        if family == CLEAN:
            clean_evidence, clean_images_sharpness = evidence[:, family_columns], images_sharpness
            paired = paired_group = None
        else:  # the family whose evidence rose most against the same prompt and seed with the clean reference
            rises = [FAMILIES[index] for index in (evidence[:, family_columns] - clean_evidence).argmax(dim=1).tolist()]
            paired = float(np.mean([rise == family for rise in rises]))
            paired_group = float(np.mean([FAMILY_GROUP[rise] == FAMILY_GROUP[family] for rise in rises]))
        readings = [
            read_object(np.asarray(result.image), scenes[index // settings.seeds].background)
            for index, result in enumerate(generated)
        ]
        results[family] = {
            "match": float(np.mean([label == family for label in predicted])),
            "round_trip_match": round_trip_match.get(family),
            "paired_match": paired,
            "paired_group_match": paired_group,
            "content_leak": float(np.mean([r.colour == reference_scene.objects[0].colour for r in readings])),
            "prompt_colour": float(
                np.mean([r.colour == scenes[i // settings.seeds].objects[0].colour for i, r in enumerate(readings)])
            ),
            "classified_as": {label: predicted.count(label) / len(predicted) for label in sorted(set(predicted))},
            "reference_classified_as": classify_families(classifier, reference)[0],
            "sharpness_ratio": images_sharpness / clean_images_sharpness,
            "reference_sharpness_ratio": float(sharpness(reference)[0]) / clean_reference_sharpness,
        }
        grid_images += [reference_image] + [result.image for result in generated[:: settings.seeds]]
        rows.append(family)
    figure = _save_grid(
        grid_images,
        len(scenes) + 1,
        out_dir / "figures" / "reference_transfer.png",
        row_labels=rows,
        column_labels=["reference"] + [f"prompt {i + 1}" for i in range(len(scenes))],
    )
    return {
        **results,
        "mean_match": float(np.mean([results[family]["match"] for family in FAMILIES])),
        "mean_round_trip_match": float(np.mean([round_trip_match[family] for family in FAMILIES])),
        "mean_paired_match": float(np.mean([results[family]["paired_match"] for family in FAMILIES])),
        "mean_paired_group_match": float(np.mean([results[family]["paired_group_match"] for family in FAMILIES])),
        "groups": FAMILY_GROUPS,
        "chance": 1 / len(labels),
        "classifier_accuracy": classifier.config.training["test"]["accuracy"],
        # held-out accuracy on rendered scenes, on scenes redrawn by the base's VAE and on the base's samples
        "classifier_accuracy_by_part": classifier.config.training["test"].get("parts", {}),
        "separability": {
            **reference_separability(encoder, settings.separability_images),
            "features": adapter.config.reference,
        },
        "reference_caption": reference_scene.caption,
        "reference_level": REFERENCE_LEVEL,
        "figure": f"figures/{figure}",
    }


@torch.no_grad()
def family_log_probabilities(classifier: LearnedModel, pixels: torch.Tensor) -> torch.Tensor:
    """The distortion classifier's log-probabilities (N, classes) for images (N, 3, H, W) in [0, 1]."""
    return classifier(pixels).log_softmax(dim=1)


def classify_families(classifier: LearnedModel, pixels: torch.Tensor) -> list[str]:
    """The class (a distortion family, or clean) the distortion classifier names for each image."""
    labels = classifier.config.classes
    return [labels[index] for index in family_log_probabilities(classifier, pixels).argmax(dim=1).tolist()]


def _round_trip_match(pipe, classifier: LearnedModel, scenes: list[Scene], seeds: int, size: int) -> dict[str, float]:
    """Per family, the share of the prompts' own scenes, degraded at :data:`REFERENCE_LEVEL` and passed through the
    base model's VAE (encoded, decoded), that the classifier names that family: how much of each family survives the
    VAE. Not a ceiling of the generated images: a generator's latents need not be ones the encoder makes."""
    clean = render_scenes([scene for scene in scenes for _ in range(seeds)], size)
    generator = torch.Generator().manual_seed(REFERENCE_SEED + 2)
    kept = {}
    for family in FAMILIES:
        drawn = to_8bit(vae_round_trip(pipe.vae, to_8bit(distort(clean, family, REFERENCE_LEVEL, generator))))
        kept[family] = float(np.mean([label == family for label in classify_families(classifier, drawn)]))
    return kept


def reference_separability(encoder, images_per_family: int) -> dict:
    """How well the reference adapter's features tell the distortion families apart: a linear probe (logistic
    regression) fit on half of labelled degraded toy scenes and tested on the other half."""
    data = make_zoo_data(
        SEPARABILITY_SEED, images_per_family * len(CLASSES), clean_fraction=1 / len(CLASSES), min_level=0.6
    )
    with torch.no_grad():
        features = encoder(data.images).double()
    half = len(features) // 2
    accuracy = linear_probe_accuracy(
        features[:half], data.family[:half], features[half:], data.family[half:], len(CLASSES)
    )
    return {
        "linear_probe_accuracy": accuracy,
        "images": len(features),
        "chance": 1 / len(CLASSES),
        "feature_dim": int(features.shape[1]),
    }


# ---------------------------------------------------------------- the demo


def run_demo(
    out_dir: str | Path,
    world: ToyWorld | None = None,
    settings: DemoSettings | None = None,
    progress: bool = True,
    pairs: bool = False,
) -> dict:
    """Run every experiment on ``world`` (default: the shipped one), with ``pairs`` the pairs experiment too; write
    reports, figures and images."""
    from .pipelines import load_pipeline

    started = time.perf_counter()
    out_dir = Path(out_dir)
    world = world or shipped_world()
    settings = settings or DemoSettings()
    pipe = load_pipeline(str(world.base), "cpu", torch.float32)
    specs = demo_metric_specs(world)
    metrics = demo_metrics(world)
    scenes = demo_scenes(settings.prompts)
    prompts = [scene.caption for scene in scenes]

    adapters = {"adapter": IQAAdapter.from_pretrained(world.adapter)}
    adapters.update((name, IQAAdapter.from_pretrained(world.metric_adapter(name))) for name in CONDITIONING_MODELS)
    features = f"features:loda:{world.loda}:cls"  # the toy LoDa's CLS token, named "loda" in the report
    evaluation = evaluate(
        out_dir,
        load_pipeline=lambda: pipe,
        base_name="toy world base",
        adapters=adapters,
        metrics=[
            ScoreColumn(column, metrics[column], {"name": name, "options": options})
            for column, (name, options) in specs.items()
        ],
        prompts=[
            Prompt(scene.caption, index, metadata={"toy_scene": {"seed": PROMPT_SEED, "index": index}})
            for index, scene in enumerate(scenes)
        ],
        settings=EvaluationSettings(
            seeds=settings.seeds,
            steps=settings.steps,
            guidance=settings.guidance,
            relgain_only=CONDITIONING_MODELS,
            batch_size=32,
        ),
        measures=Measures(
            extractors=[f"loda={features}"],
            following_scorer=ToyCaptionScorer(),
            reference=str(write_reference_scenes(out_dir / "reference_scenes", settings.reference_scenes)),
            distances=("ssim", "ms_ssim", f"loda_features=features:{features}"),
            metric_groups={"learned": list(LEARNED), "classical": list(CLASSICAL)},
        ),
        progress=progress,
    )
    report = {
        **evaluation,
        **evaluation["adapters"]["adapter"],  # the main adapter's experiments at the top
        "distances": evaluation["distances_by_adapter"]["adapter"],
    }
    report["zoo"] = zoo_report(world)
    report["caption_accuracy"] = caption_accuracy(report["prompt_following"])
    report["panel"] = panel_experiment(out_dir, world, settings, progress)
    report["gradient_guidance"] = gradient_guidance_experiment(
        pipe, metrics, prompts, settings, out_dir, report["relgain"]["p99"], progress
    )
    report["reference_transfer"] = reference_transfer_experiment(
        pipe,
        IQAAdapter.from_pretrained(world.reference_adapter),
        LearnedModel.from_pretrained(world.zoo("classifier")),
        scenes,
        settings,
        out_dir,
        progress,
    )
    if pairs:
        report.update(pairs_experiment(pipe, world, settings, out_dir, progress))
    report["claims"] = demo_claims(report)
    report["world"] = world.describe()
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out_dir / "report.json", report)
    atomic_write(out_dir / "report.md", lambda path: Path(path).write_text(demo_markdown(report)))
    summary = demo_summary(report)
    if progress:
        print(summary)
    return report


def zoo_report(world: ToyWorld) -> dict:
    """Held-out agreement of every learned model with its targets (the toy analog of the paper's Table 2)."""
    zoo = {"loda": json.loads((world.loda / "toy_loda.json").read_text())["test"]}
    for name in ("cnniqa", "aesthetic", "panel", "classifier"):
        zoo[name] = LearnedModel.from_pretrained(world.zoo(name)).config.training["test"]
    return zoo


def caption_accuracy(following: dict) -> dict:
    """``{condition: {colour, shape, position, background}}`` for base, p1, p50 and p99 of the main adapter."""
    return {
        condition: {task: following[name][task] for task in ToyCaptionScorer.tasks}
        for condition, name in (("base", "base"), ("p1", "adapter/p1"), ("p50", "adapter/p50"), ("p99", "adapter/p99"))
        if name in following
    }


def panel_experiment(out_dir: Path, world: ToyWorld, settings: DemoSettings, progress: bool = False) -> dict:
    """The toy subjective study: simulated participants vote on every pair of base, p1, p50 and p99 images of the
    same prompt and seed, by the panel judge's scores plus their own noise; win rates as the paper's Figure 3b/3c."""
    _announce("panel: simulated participants vote on pairs of base, p1, p50 and p99 images", progress)
    judge = create_metric(world.metric_spec("panel")).eval()
    folders = {"base": "base", "p1": "adapter/p1", "p50": "adapter/p50", "p99": "adapter/p99"}
    scores = {}
    for condition, folder in folders.items():
        files = sorted((out_dir / "images" / folder).glob("*.png"))
        scores[condition] = score_tensors(judge, [rgb_tensor(Image.open(path)) for path in files])
    pairs = []
    for first, second in combinations(PANEL_CONDITIONS, 2):
        votes = simulate_votes(
            scores[first],
            scores[second],
            settings.participants,
            settings.participant_noise,
            settings.same_margin,
            seed=len(pairs),
        )
        pairs += [PairVotes(first, second, int(a), int(b), int(same)) for a, b, same in zip(*votes)]
    rates = win_rates(pairs)
    outcomes = [
        (pair.a, pair.b, score)
        for pair in pairs
        for score, count in ((1.0, pair.votes_a), (0.0, pair.votes_b), (0.5, pair.same))
        for _ in range(count)
    ]
    rates["bradley_terry"] = {condition: {"score": value} for condition, value in bradley_terry(outcomes).items()}
    made = figures.preference_figures(
        rates,
        list(PANEL_CONDITIONS),
        f"toy panel, {len(pairs)} image pairs x {settings.participants} simulated participants",
        rates["bradley_terry"],
    )
    figures_dir = out_dir / "figures"
    return {
        **rates,
        "mean_score": {c: float(np.mean(values)) for c, values in scores.items()},
        "participants": settings.participants,
        "participant_noise": settings.participant_noise,
        "same_margin": settings.same_margin,
        "judge": "panel (never used for conditioning)",
        "figures": {
            name: figures.save_png(figure, figures_dir / f"panel_{name}.png", out_dir) for name, figure in made.items()
        },
    }


def pairs_experiment(pipe, world: ToyWorld, settings: DemoSettings, out_dir: Path, progress: bool = False) -> dict:
    """IQA-Adapter as a degradation model: pairs from the world's ``settings.pair_adapter`` at p99 (high) and p1
    (low) from the same noise, kept when the content filter (``settings.pair_filter``: blurred SSIM, the p1 image
    scoring lower; and the toy readers on both images) passes them, in ``out_dir/pairs`` (BasicSR folders); then
    the restoration experiment on the kept pairs. Returns ``{"pairs": {made, kept, kept_share, drop_reasons, ...},
    "restoration": {arm: {psnr, ssim, families}, ...}}``; ``restoration`` is None when the filter kept no pair."""
    _announce(
        f"pairs: {settings.pair_prompts} prompts x {settings.pair_seeds} seeds at p99 and p1, then the "
        "restoration experiment",
        progress,
    )
    adapter = IQAAdapter.from_pretrained(world.named_adapter(settings.pair_adapter))
    specs = demo_metric_specs(world)
    columns = score_columns({name: specs[name] for name in adapter.metric_names})
    prompts = [
        Prompt(
            scene_for(PAIRS_SEED, index, kind="single", full_caption=True).caption,
            index,
            metadata={"toy_scene": {"seed": PAIRS_SEED, "index": index}},
        )
        for index in range(settings.pair_prompts)
    ]
    folder = out_dir / "pairs"
    content_filter = (
        ContentFilter(settings.pair_filter, ToyCaptionScorer())
        if settings.pair_filter is not None
        else ContentFilter(FilterSettings(min_ssim=None, min_degradation=None))
    )
    summary = make_pairs(
        pipe,
        adapter,
        prompts,
        folder,
        high=dict.fromkeys(adapter.metric_names, "p99"),
        levels=quality_levels({name: ["p1"] for name in adapter.metric_names}),
        metrics=columns,
        settings=PairSettings(
            seeds=settings.pair_seeds, steps=settings.steps, guidance=settings.guidance, batch_size=32, chunk_size=64
        ),
        content_filter=content_filter,
        progress=progress,
    )
    restoration = restoration_experiment(folder, settings.restoration, out_dir) if summary["kept"] else None
    return {
        "pairs": {key: summary[key] for key in ("made", "kept", "kept_share", "drop_reasons")}
        | {"folder": "pairs", "adapter": settings.pair_adapter, "high": "p99", "low": "p1"},
        "restoration": restoration,
    }


def demo_claims(report: dict) -> dict:
    """Every claim of the paper the demo can check, as True / False from the numbers (never adjusted)."""
    quality = report["adapters"]["adapter"]["claims"]
    matrix = report["relgain_matrix"]
    other_learned = [
        matrix[adapter][metric] > 0
        for adapter in matrix
        for metric in LEARNED
        if metric not in report["adapters"][adapter]["target_metrics"]
    ]
    panel, caption = report["panel"], report["caption_accuracy"]
    overall = {condition: float(np.mean(list(values.values()))) for condition, values in caption.items()}
    guidance = report["gradient_guidance"]
    return {
        "target_quality_follows_the_input_percentile": quality["target_quality_follows_the_input_percentile"],
        "p99_improves_every_target_metric": quality["p99_improves_every_target_metric"],
        "p1_degrades_every_target_metric": quality["p1_degrades_every_target_metric"],
        "p99_improves_most_other_learned_metrics": bool(np.mean(other_learned) > 0.5) if other_learned else None,
        "p99_improves_most_classical_metrics": bool(np.mean([matrix["adapter"][m] > 0 for m in CLASSICAL]) > 0.5),
        "negative_guidance_strengthens_the_p99_gain_on_every_target_metric": quality.get(
            "negative_guidance_strengthens_the_p99_gain_on_every_target_metric"
        ),
        "the_panel_prefers_p99_to_the_base_model": panel["pairwise"]["p99"]["base"] > panel["pairwise"]["base"]["p99"],
        "panel_win_rates_follow_the_quality_level": panel["win_rate"]["p99"]
        > panel["win_rate"]["p50"]
        > panel["win_rate"]["p1"],
        "p99_keeps_caption_following": overall["p99"] >= overall["base"] - 0.05,
        "gradient_guidance_raises_its_target_more_than_the_adapter": guidance["relgain"]["loda"]
        > report["relgain_matrix"]["loda"]["loda"],
        "reference_transfer_shows_the_reference_family": report["reference_transfer"]["mean_match"] >= 0.5,
    } | (
        {
            "generated_pairs_teach_restoration": None
            if report["restoration"] is None
            else report["restoration"]["generated"]["psnr"] > report["restoration"]["identity"]["psnr"]
        }
        if "restoration" in report
        else {}
    )


CLASSIFIER_PARTS = {"rendered": "rendered", "round_trip": "redrawn by the VAE", "generated": "base samples"}


def _by_part(transfer: dict) -> str:
    """``" (rendered 0.93, redrawn by the VAE 0.91, ...)"``: the classifier's accuracy on each held-out part."""
    parts = transfer.get("classifier_accuracy_by_part", {})
    named = [f"{CLASSIFIER_PARTS.get(part, part)} {value:.3f}" for part, value in parts.items()]
    return f" ({', '.join(named)})" if named else ""


def transfer_by_family(transfer: dict) -> dict[str, dict]:
    """The per-family entries of ``report["reference_transfer"]`` (``clean`` and every distortion family)."""
    return {family: transfer[family] for family in ["clean", *FAMILIES] if family in transfer}


def demo_markdown(report: dict) -> str:
    """The evaluation's Markdown report, then the zoo, the panel, guidance, reference transfer and the claims."""
    lines = [
        report_markdown(report),
        "## The zoo of learned models (held-out agreement with their targets)",
        "",
        "| model | SRCC | PLCC | accuracy | images |",
        "|---|---|---|---|---|",
    ]
    for name, test in report["zoo"].items():
        cells = [f"{test[key]:.3f}" if key in test else "" for key in ("srcc", "plcc", "accuracy")]
        lines.append(f"| {name} | {' | '.join(cells)} | {test.get('images', '')} |")
    panel = report["panel"]
    lines += [
        "",
        "## Toy panel (the paper's subjective study, Figures 3b and 3c)",
        "",
        f"{panel['participants']} simulated participants per pair (the panel judge's score plus Gaussian noise "
        f'of {panel["participant_noise"]:g} points; "same" below {panel["same_margin"]:g}).',
        "",
        "| condition | win rate | share of votes | judge's mean score |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {c} | {panel['win_rate'][c]:.3f} | {panel['vote_share'][c]:.3f} | {panel['mean_score'][c]:.2f} |"
        for c in PANEL_CONDITIONS
    ]
    lines += [
        "",
        "| row wins against column | " + " | ".join(PANEL_CONDITIONS) + " |",
        "|---" * (len(PANEL_CONDITIONS) + 1) + "|",
    ]
    lines += [
        f"| {a} | "
        + " | ".join(f"{panel['pairwise'][a][b]:.2f}" if b in panel["pairwise"][a] else "" for b in PANEL_CONDITIONS)
        + " |"
        for a in PANEL_CONDITIONS
    ]
    lines += [
        "",
        "## Caption following (colour, shape, position, background)",
        "",
        "| condition | colour | shape | position | background |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c} | " + " | ".join(f"{values[task]:.3f}" for task in ("colour", "shape", "position", "background")) + " |"
        for c, values in report["caption_accuracy"].items()
    ]
    guidance = report["gradient_guidance"]
    lines += [
        "",
        "## IQA-gradient guidance vs IQA-Adapter (RelGain %, + = better)",
        "",
        f"Guidance on `{guidance['target']}` with alpha = {guidance['alpha']:g}, no adapter; the main adapter at p99.",
        "",
        "| metric | gradient guidance | IQA-Adapter p99 |",
        "|---|---|---|",
    ]
    for name, gain in guidance["relgain"].items():
        lines.append(f"| {name} | {gain:+.2f} | {guidance['adapter_relgain_p99'].get(name, float('nan')):+.2f} |")
    transfer = report["reference_transfer"]
    separability = transfer["separability"]
    groups = "; ".join(f"{group}: {', '.join(families)}" for group, families in transfer["groups"].items())
    lines += [
        "",
        "## Reference-based transfer",
        "",
        f'Reference: "{transfer["reference_caption"]}", degraded at level {transfer["reference_level"]}. '
        "Match: the share of generated images in which the zoo's distortion classifier (held-out accuracy "
        f"{transfer['classifier_accuracy']:.3f} on degraded toy scenes{_by_part(transfer)}, chance "
        f"{transfer['chance']:.3f}) finds "
        f"the reference's family; mean over the {len(FAMILIES)} families: {transfer['mean_match']:.3f}. Paired match: "
        "the share in which the reference's family is the one whose evidence rose most against the image of the same "
        "prompt and seed made with the clean reference (the base model's own images read as some families; pairing "
        f"removes that); mean {transfer['mean_paired_match']:.3f}. Group match: the same, counting a family of the "
        f"reference's KADID group ({groups}) as a match; mean {transfer['mean_paired_group_match']:.3f}. The "
        f"reference features tell the families apart with a linear probe at "
        f"{separability['linear_probe_accuracy']:.3f} ({separability['images']} images). VAE round trip: the "
        "share of the prompts' scenes with the reference's distortion, encoded and decoded by the base model's VAE, "
        "that the classifier reads as that family (how much of the family survives the VAE); mean "
        f"{transfer['mean_round_trip_match']:.3f}. Content leak: the share in which the object takes the reference's "
        "colour instead of the prompt's. Sharpness ratio, read without the classifier: the images' mean sharpness "
        "(energy of the Laplacian) against that of the images made with the clean reference, beside the reference's "
        "own against the clean reference's (whether the adapter moves detail the reference's way, and how far).",
        "",
        "| reference | match | VAE round trip | paired match | group match | content leak | prompt colour kept "
        "| reference classified as | sharpness ratio | reference's sharpness ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family, values in transfer_by_family(transfer).items():
        lines.append(
            f"| {family} | {values['match']:.2f} | "
            + " | ".join(
                "-" if values[key] is None else f"{values[key]:.2f}" for key in ("round_trip_match", *PAIRED_KEYS)
            )
            + f" | {values['content_leak']:.2f} | {values['prompt_colour']:.2f} "
            f"| {values['reference_classified_as']} | {values['sharpness_ratio']:.2f} "
            f"| {values['reference_sharpness_ratio']:.2f} |"
        )
    if "restoration" in report:
        lines += _restoration_markdown(report["pairs"], report["restoration"])
    lines += ["", "## The paper's claims on the toy world", ""]
    lines += [
        f"- {claim.replace('_', ' ')}: **{'yes' if value else 'no' if value is not None else 'n/a'}**"
        for claim, value in report["claims"].items()
    ]
    lines += ["", f"Total: {report['seconds']} s.", ""]
    return "\n".join(lines)


def _restoration_markdown(pairs: dict, restoration: dict | None) -> list[str]:
    reasons = ", ".join(f"{reason} {count}" for reason, count in pairs["drop_reasons"].items()) or "none"
    if restoration is None:
        return [
            "",
            "## IQA-Adapter as a degradation model (pairs and restoration)",
            "",
            f"{pairs['made']} pairs made, none kept (dropped for: {reasons}); no restoration network trained.",
        ]
    families = list(restoration["identity"]["families"])
    lines = [
        "",
        "## IQA-Adapter as a degradation model (pairs and restoration)",
        "",
        f"{pairs['made']} pairs made at {pairs['high']} / {pairs['low']}, {pairs['kept']} kept "
        f"({pairs['kept_share']:.0%}; dropped for: {reasons}). One small network per arm, tested on "
        f"{restoration['test']['scenes']} held-out scenes x {len(families)} real degradation families "
        f"(levels {restoration['test']['levels']}): PSNR (dB) / SSIM.",
        "",
        "| arm | training pairs | all | " + " | ".join(families) + " |",
        "|---" * (len(families) + 3) + "|",
    ]
    for arm in ARMS:
        values = restoration[arm]
        cells = [f"{values['families'][family]['psnr']:.2f}" for family in families]
        lines.append(
            f"| {arm} | {restoration['pairs'].get(arm, 0)} | {values['psnr']:.2f} / {values['ssim']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def demo_summary(report: dict) -> str:
    """A few lines for the terminal."""
    matrix, panel, transfer = report["relgain_matrix"], report["panel"], report["reference_transfer"]
    columns = [*LEARNED, "mean_learned", "mean_classical"]
    lines = [
        f"demo: {report['n_images']} images, {report['seconds']} s (report.md, report.json, figures/, images/)",
        "RelGain at p99 (%):  "
        + "  |  ".join(
            f"{adapter}: " + " ".join(f"{column} {matrix[adapter][column]:+.1f}" for column in columns)
            for adapter in matrix
        ),
        "zoo held-out SRCC:   "
        + "  ".join(f"{name} {test['srcc']:.3f}" for name, test in report["zoo"].items() if "srcc" in test)
        + f"  classifier accuracy {report['zoo']['classifier']['accuracy']:.3f}",
        "panel win rates:     "
        + "  ".join(f"{c} {panel['win_rate'][c]:.2f}" for c in PANEL_CONDITIONS)
        + f"  (p99 vs base {panel['pairwise']['p99']['base']:.2f} / {panel['pairwise']['base']['p99']:.2f})",
        "caption accuracy:    "
        + "  ".join(
            f"{c} " + "/".join(f"{values[task]:.2f}" for task in ("colour", "shape", "position", "background"))
            for c, values in report["caption_accuracy"].items()
        )
        + "  (colour/shape/position/background)",
        "Frechet distance to clean scenes (toy LoDa features) base / p1 / p99:  "
        + " / ".join(
            f"{next(iter(report['frechet'].values()))[name]['reference_all']:.3g}"
            for name in ("base", "adapter/p1", "adapter/p99")
        ),
        "distance between the p1 and p99 images:  "
        + "  ".join(
            f"{measure} {matrix_['p1']['p99']:.3f}"
            for measure, matrix_ in report["distances"].items()
            if isinstance(matrix_, dict)
        ),
        f"reference transfer:  mean match {transfer['mean_match']:.2f} (VAE round trip "
        f"{transfer['mean_round_trip_match']:.2f}), paired {transfer['mean_paired_match']:.2f}, "
        f"group {transfer['mean_paired_group_match']:.2f} "
        f"(classifier {transfer['classifier_accuracy']:.2f},"
        f" features separable at {transfer['separability']['linear_probe_accuracy']:.2f})",
        *(
            [
                f"pairs: kept {report['pairs']['kept']} of {report['pairs']['made']}; restoration PSNR "
                + "  ".join(f"{arm} {report['restoration'][arm]['psnr']:.2f}" for arm in ARMS)
                + " dB"
            ]
            if report.get("restoration")
            else []
        ),
        "claims: "
        + ", ".join(
            f"{claim.replace('_', ' ')}: {'yes' if value else 'no' if value is not None else 'n/a'}"
            for claim, value in report["claims"].items()
        ),
        f"(main adapter conditioned on {', '.join(report['target_metrics'])})",
    ]
    return "\n".join(lines)
