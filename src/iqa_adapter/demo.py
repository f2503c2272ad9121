"""``iqa-adapter demo``: the paper's main experiments, reproduced offline on the embedded toy world.

The toy world (:mod:`iqa_adapter.toy.world`) is a small text-to-image model, toy IQA models (a tiny LoDa,
a NIQE model, the classical metrics) and IQA-Adapters, all trained by this project's own commands on
procedural captioned images. The demo runs, with fixed prompts and seeds:

1. the evaluation of :func:`iqa_adapter.evaluation.evaluate` for the score adapter, through the same code as a
   real model: percentile sweep (paper Figures 1, 4, 10, 16, 17), RelGain at p99 and p1 for every metric
   (Figure 3a, section 5.1), adapter-scale sweep (Figure 13), negative quality guidance (Figure 8), with the
   toy world's own models for the rest of the paper's evaluation: caption following read by the toy readers
   (its GenEval, :class:`~iqa_adapter.toy.caption_check.ToyCaptionScorer`), a Frechet distance with the toy
   LoDa's features to clean rendered scenes (Table 5), and the distances between quality levels (Figure 11);
2. IQA-gradient guidance (section 3.1) on the toy LoDa, without adapter, RelGain on every metric beside the
   adapter's (Figure 9: the paper finds target-only gains and adversarial patterns for guidance, cross-metric
   gains for the adapter);
3. reference-based transfer: references degraded with each distortion family. ``match`` is the fraction of
   generated images that a distortion classifier (nearest centroid in the reference features, fitted on toy
   images with known distortions) assigns to the reference's family; ``content_leak`` the fraction whose
   object takes the reference's colour instead of the prompt's (read by :mod:`iqa_adapter.toy.caption_check`);
4. with ``pairs`` (``demo --pairs``), IQA-Adapter as a degradation model (paper section 5.1, supplement 13): toy
   pairs from the adapter at p99 and p1, filtered for content (:mod:`iqa_adapter.pairs`), and the restoration
   experiment of :mod:`iqa_adapter.pairs.restoration` (a small network trained on them, on real pairs and not at
   all, tested on held-out real degradations).

The numbers are whatever the models produce; ``report.json`` and ``report.md`` say which claims hold.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .adapter import IQAAdapter
from .distortions import FAMILIES, distort
from .evaluation import EvaluationSettings, Measures, evaluate, relgain
from .evaluation.passes import ScoreColumn, score_tensors
from .evaluation.prompts import Prompt
from .evaluation.report import report_markdown
from .generation import generate
from .grid import image_grid
from .guidance import IQAGuidance
from .images import rgb_tensor
from .io_utils import atomic_write, write_json
from .metrics import QualityMetric, create_metric
from .pairs import ContentFilter, FilterSettings, PairSettings, make_pairs, quality_levels
from .pairs.restoration import ARMS, RestorationSettings, restoration_experiment
from .toy.caption_check import ToyCaptionScorer, read_object
from .toy.scenes import Scene, render_scene, scene_for
from .toy.world import GUIDANCE_SCALE, SAMPLING_STEPS, ToyWorld, shipped_world

PROMPT_SEED = 2000  # toy scenes of the demo prompts: a seed no training data uses
REFERENCE_SEED = 3000  # clean scenes that become the references
CLASSIFIER_SEED = 4000  # labelled distorted scenes that fit the distortion classifier
REFERENCE_LEVEL = 0.8  # distortion level of the references (1 = strongest)
PAIRS_SEED = 5300  # toy scenes of the pairs experiment's prompts


@dataclass
class DemoSettings:
    """How much the demo generates; ``quick`` shrinks everything for the test suite."""

    prompts: int = 8
    seeds: int = 4
    steps: int = SAMPLING_STEPS
    guidance: float = GUIDANCE_SCALE
    guidance_alpha: float = 30.0
    classifier_images: int = 24  # per family
    reference_scenes: int = 256  # clean rendered scenes, the Frechet distance's reference set
    pair_prompts: int = 1000  # pairs experiment (demo --pairs): single-object prompts ...
    pair_seeds: int = 2  # ... x seeds, one p1 image per p99 image
    pair_filter: FilterSettings | None = field(default_factory=FilterSettings)  # None: keep every pair (quick)
    restoration: RestorationSettings = field(default_factory=RestorationSettings)

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(
            prompts=2,
            seeds=1,
            steps=2,
            classifier_images=2,
            reference_scenes=8,
            pair_prompts=4,
            pair_seeds=1,
            pair_filter=None,
            restoration=RestorationSettings.miniature(),
        )


def demo_scenes(count: int) -> list[Scene]:
    """Single-object toy scenes with every attribute in the caption (their captions are the prompts)."""
    return [scene_for(PROMPT_SEED, index, kind="single", full_caption=True) for index in range(count)]


def demo_metric_specs(world: ToyWorld) -> dict[str, tuple[str, dict]]:
    """Every metric the demo evaluates, as (registry name, options): the toy LoDa, NIQE fitted on clean toy images,
    the classical ones."""
    specs = {"loda": (f"loda:{world.loda}", {}), "niqe": ("niqe", {"params": str(world.niqe)})}
    specs.update(
        (name, (name, {})) for name in ("piqe", "sharpness", "noise", "blockiness", "colorfulness", "contrast")
    )
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


def _to_images(pixels: torch.Tensor) -> list[Image.Image]:
    arrays = (pixels.clamp(0, 1).permute(0, 2, 3, 1) * 255).round().byte().numpy()
    return [Image.fromarray(array) for array in arrays]


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


class DistortionClassifier:
    """Which distortion family (or clean) an image has: multinomial logistic regression on standardised features.

    It is fit on the base model's own samples (no adapter), left as they are ("clean") or degraded with each
    family at a random level in [0.5, 1], so that it judges a generated image against what the base model
    generates, not against rendered scenes (the VAE and the base model have their own softness, which a
    classifier fit on rendered scenes reads as blur). ``accuracy`` is measured on held-out samples.
    """

    def __init__(
        self,
        features: Callable[[torch.Tensor], torch.Tensor],
        clean: torch.Tensor,
        seed: int = CLASSIFIER_SEED,
        weight_decay: float = 1e-3,
    ):
        self.features = features
        self.labels = ["clean", *FAMILIES]
        fit, held_out = clean[: len(clean) // 2], clean[len(clean) // 2 :]
        generator = torch.Generator().manual_seed(seed)
        inputs = [self.features(images).double() for images in self._degraded(fit, generator)]
        stacked = torch.cat(inputs)
        targets = torch.cat([torch.full((len(batch),), label) for label, batch in enumerate(inputs)])
        self.mean, self.std = stacked.mean(dim=0), stacked.std(dim=0).clamp_min(1e-6)
        self.linear = _fit_logistic_regression(
            (stacked - self.mean) / self.std, targets, len(self.labels), weight_decay
        )
        predictions = [self.predict(images) for images in self._degraded(held_out, generator)]
        self.accuracy = float(
            np.mean([label == truth for truth, predicted in zip(self.labels, predictions) for label in predicted])
        )

    def _degraded(self, clean: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """``clean`` as it is, then degraded with each family: one batch per label."""
        return [clean] + [
            distort(clean, family, 0.5 + 0.5 * torch.rand(len(clean), generator=generator), generator)
            for family in FAMILIES
        ]

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor) -> list[str]:
        logits = self.linear((self.features(pixels).double() - self.mean) / self.std)
        return [self.labels[index] for index in logits.argmax(dim=1).tolist()]


def _fit_logistic_regression(
    inputs: torch.Tensor, targets: torch.Tensor, classes: int, weight_decay: float
) -> torch.nn.Linear:
    torch.manual_seed(0)
    linear = torch.nn.Linear(inputs.shape[1], classes).double()
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(linear(inputs), targets) + weight_decay * linear.weight.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return linear.requires_grad_(False)


def metric_features(metrics: dict[str, QualityMetric]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Image features for the distortion classifier: every metric's score and the mean and std of each channel."""

    @torch.no_grad()
    def features(pixels: torch.Tensor) -> torch.Tensor:
        scores = [metric.score(pixels).float().reshape(-1, 1).cpu() for metric in metrics.values()]
        return torch.cat([*scores, pixels.mean(dim=(2, 3)), pixels.std(dim=(2, 3))], dim=1)

    return features


def base_samples(pipe, count: int, settings: DemoSettings, progress: bool = False) -> torch.Tensor:
    """``count`` samples of the base model (no adapter) for single-object prompts, as (N, 3, H, W) in [0, 1]."""
    prompts = [scene_for(CLASSIFIER_SEED, index, kind="single", full_caption=True).caption for index in range(count)]
    results = generate(
        pipe, None, prompts, seed=CLASSIFIER_SEED, steps=settings.steps, guidance=settings.guidance, progress=progress
    )
    return _pixels([result.image for result in results])


def reference_transfer_experiment(
    pipe,
    adapter: IQAAdapter,
    metrics: dict[str, QualityMetric],
    scenes: list[Scene],
    settings: DemoSettings,
    out_dir: Path,
    progress: bool = False,
) -> dict:
    """One degraded reference per family (a scene whose object colour differs from every prompt's)."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    encoder = adapter.reference_encoder()
    _announce("reference transfer: base samples for the distortion classifier", progress)
    base = base_samples(pipe, 2 * settings.classifier_images, settings, progress)
    classifier = DistortionClassifier(metric_features(metrics), base)
    prompt_colours = {scene.objects[0].colour for scene in scenes}
    reference_scene = next(
        scene
        for index in range(1000)
        for scene in [scene_for(REFERENCE_SEED, index, kind="single", full_caption=True)]
        if scene.objects[0].colour not in prompt_colours
    )
    clean = torch.from_numpy(render_scene(reference_scene, size)).permute(2, 0, 1).float()[None] / 255
    generator = torch.Generator().manual_seed(REFERENCE_SEED)
    results: dict[str, dict] = {}
    grid_images, labels = [], []
    for family in ["clean", *FAMILIES]:
        _announce(f"reference transfer: a {family} reference", progress)
        reference = clean if family == "clean" else distort(clean, family, REFERENCE_LEVEL, generator)
        reference_image = _to_images(reference)[0]
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
        predicted = classifier.predict(pixels)
        readings = [
            read_object(np.asarray(result.image), scenes[index // settings.seeds].background)
            for index, result in enumerate(generated)
        ]
        results[family] = {
            "match": float(np.mean([label == family for label in predicted])),
            "content_leak": float(np.mean([r.colour == reference_scene.objects[0].colour for r in readings])),
            "prompt_colour": float(
                np.mean([r.colour == scenes[i // settings.seeds].objects[0].colour for i, r in enumerate(readings)])
            ),
            "reference_classified_as": classifier.predict(reference)[0],
        }
        grid_images += [reference_image] + [result.image for result in generated[:: settings.seeds]]
        labels.append(family)
    figure = _save_grid(
        grid_images,
        len(scenes) + 1,
        out_dir / "figures" / "reference_transfer.png",
        row_labels=labels,
        column_labels=["reference"] + [f"prompt {i + 1}" for i in range(len(scenes))],
    )
    return {
        **results,
        "chance": 1 / len(classifier.labels),
        "classifier_accuracy": classifier.accuracy,
        "reference_caption": reference_scene.caption,
        "reference_level": REFERENCE_LEVEL,
        "figure": f"figures/{figure}",
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

    adapter = IQAAdapter.from_pretrained(world.adapter)
    columns = [
        ScoreColumn(column, metrics[column], {"name": name, "options": options})
        for column, (name, options) in specs.items()
    ]
    features = f"features:loda:{world.loda}:cls"  # the toy LoDa's CLS token, named "loda" in the report
    report = evaluate(
        out_dir,
        load_pipeline=lambda: pipe,
        base_name="toy world base",
        adapters={"adapter": adapter},
        metrics=columns,
        prompts=[
            Prompt(scene.caption, index, metadata={"toy_scene": {"seed": PROMPT_SEED, "index": index}})
            for index, scene in enumerate(scenes)
        ],
        settings=EvaluationSettings(
            seeds=settings.seeds, steps=settings.steps, guidance=settings.guidance, batch_size=32
        ),
        measures=Measures(
            extractors=[f"loda={features}"],
            following_scorer=ToyCaptionScorer(),
            reference=str(write_reference_scenes(out_dir / "reference_scenes", settings.reference_scenes)),
            distances=("ssim", "ms_ssim", f"loda_features=features:{features}"),
        ),
        progress=progress,
    )
    report["gradient_guidance"] = gradient_guidance_experiment(
        pipe, metrics, prompts, settings, out_dir, report["relgain"]["p99"], progress
    )
    reference_adapter = IQAAdapter.from_pretrained(world.reference_adapter)
    report["reference_transfer"] = reference_transfer_experiment(
        pipe, reference_adapter, metrics, scenes, settings, out_dir, progress
    )
    if pairs:
        scored = [column for column in columns if column.name in adapter.metric_names]
        report.update(pairs_experiment(pipe, adapter, scored, settings, out_dir, progress))
        report["claims"]["generated_pairs_teach_restoration"] = (
            None
            if report["restoration"] is None
            else report["restoration"]["generated"]["psnr"] > report["restoration"]["identity"]["psnr"]
        )
    report["world"] = world.describe()
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out_dir / "report.json", report)
    atomic_write(out_dir / "report.md", lambda path: Path(path).write_text(demo_markdown(report)))
    summary = demo_summary(report)
    if progress:
        print(summary)
    return report


def pairs_experiment(
    pipe, adapter: IQAAdapter, columns: list[ScoreColumn], settings: DemoSettings, out_dir: Path, progress: bool = False
) -> dict:
    """IQA-Adapter as a degradation model: pairs from ``adapter`` at p99 (high) and p1 (low) from the same noise,
    scored with ``columns`` (the adapter's metrics), kept when the content filter (``settings.pair_filter``: blurred
    SSIM, the p1 image scoring lower; and the toy readers on both images) passes them, in ``out_dir/pairs`` (BasicSR folders); then the restoration experiment on
    the kept pairs. Returns ``{"pairs": {made, kept, kept_share, drop_reasons, ...}, "restoration": {arm: {psnr,
    ssim, families}, ...}}``; ``restoration`` is None when the filter kept no pair."""
    _announce(
        f"pairs: {settings.pair_prompts} prompts x {settings.pair_seeds} seeds at p99 and p1, then the "
        "restoration experiment",
        progress,
    )
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
        | {"folder": "pairs", "high": "p99", "low": "p1"},
        "restoration": restoration,
    }


def transfer_by_family(transfer: dict) -> dict[str, dict]:
    """The per-family entries of ``report["reference_transfer"]`` (``clean`` and every distortion family)."""
    return {family: transfer[family] for family in ["clean", *FAMILIES] if family in transfer}


def demo_markdown(report: dict) -> str:
    """The evaluation's Markdown report, followed by the guidance and reference-transfer sections."""
    lines = [
        report_markdown(report),
        "## IQA-gradient guidance vs IQA-Adapter (RelGain %, + = better)",
        "",
        f"Guidance on `{report['gradient_guidance']['target']}` with alpha = {report['gradient_guidance']['alpha']:g}, "
        "no adapter; adapter at p99.",
        "",
        "| metric | gradient guidance | IQA-Adapter p99 |",
        "|---|---|---|",
    ]
    guidance = report["gradient_guidance"]
    for name, gain in guidance["relgain"].items():
        lines.append(f"| {name} | {gain:+.2f} | {guidance['adapter_relgain_p99'].get(name, float('nan')):+.2f} |")
    transfer = report["reference_transfer"]
    lines += [
        "",
        "## Reference-based transfer",
        "",
        f'Reference: "{transfer["reference_caption"]}", degraded at level {transfer["reference_level"]}. '
        "Match: the share of generated images in which a distortion classifier (logistic regression on the "
        "demo's metric scores and channel statistics, fit on the base model's samples, clean or degraded by "
        "each family) finds the "
        f"reference's family; its accuracy on held-out base samples is {transfer['classifier_accuracy']:.2f}, "
        f"chance {transfer['chance']:.2f}. Content leak: the share in which the object takes the reference's "
        "colour instead of the prompt's.",
        "",
        "| reference | match | content leak | prompt colour kept | reference classified as |",
        "|---|---|---|---|---|",
    ]
    for family, values in transfer_by_family(transfer).items():
        lines.append(
            f"| {family} | {values['match']:.2f} | {values['content_leak']:.2f} | {values['prompt_colour']:.2f} "
            f"| {values['reference_classified_as']} |"
        )
    if "restoration" in report:
        lines += _restoration_markdown(report["pairs"], report["restoration"])
    lines += ["", f"Total: {report['seconds']} s.", ""]
    return "\n".join(lines)


def _restoration_markdown(pairs: dict, restoration: dict | None) -> list[str]:
    reasons = ", ".join(f"{reason} {count}" for reason, count in pairs["drop_reasons"].items()) or "none"
    heading = ["", "## IQA-Adapter as a degradation model (pairs and restoration)", ""]
    if restoration is None:
        return [*heading, f"{pairs['made']} pairs made, none kept (dropped for: {reasons}); no network trained."]
    families = list(restoration["identity"]["families"])
    lines = [
        *heading,
        f"{pairs['made']} pairs made at {pairs['high']} / {pairs['low']}, {pairs['kept']} kept "
        f"({pairs['kept_share']:.0%}; dropped for: {reasons}). One small network per arm, tested on "
        f"{restoration['test']['scenes']} held-out scenes x {len(families)} real degradation families "
        f"(levels {restoration['test']['levels']}): PSNR in dB (all: PSNR / SSIM).",
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


def _fidelity_lines(report: dict) -> list[str]:
    """Caption following, Frechet distance and the p1-p99 distances, base against the adapter."""
    conditions = ["base", "adapter/p1", "adapter/p99"]
    following = report["prompt_following"]
    frechet = next(iter(report["frechet"].values()))
    distances = {
        measure: matrix["p1"]["p99"] for measure, matrix in report["distances"].items() if isinstance(matrix, dict)
    }
    return [
        "caption following base / p1 / p99:  "
        + "  ".join(
            f"{task} " + "/".join(f"{following[name][task]:.2f}" for name in conditions)
            for task in following["base"]
            if task != "overall"
        ),
        "Frechet distance to clean scenes (toy LoDa features) base / p1 / p99:  "
        + " / ".join(f"{frechet[name]['reference_all']:.3g}" for name in conditions),
        "distance between the p1 and p99 images:  "
        + "  ".join(f"{measure} {value:.3f}" for measure, value in distances.items()),
    ]


def demo_summary(report: dict) -> str:
    """A few lines for the terminal."""
    targets = report["target_metrics"]
    p99, p1 = report["relgain"]["p99"], report["relgain"]["p1"]
    sweep = report["percentile_sweep"]
    guidance = report["gradient_guidance"]
    transfer = transfer_by_family(report["reference_transfer"])
    lines = [
        f"demo: {report['n_images']} images, {report['seconds']} s (report.md, report.json, figures/, images/)",
        "RelGain vs base (%, + = better):  "
        + "  ".join(f"{name} p99 {p99[name]:+.1f} / p1 {p1[name]:+.1f}" for name in p99),
        "percentile -> score Spearman:    " + "  ".join(f"{name} {sweep[name]['spearman']:+.2f}" for name in sweep),
        f"gradient guidance on loda: loda {guidance['relgain']['loda']:+.1f} %, other metrics improved "
        f"{guidance['improved_other_metrics']}/{len(guidance['relgain']) - 1} (adapter p99: "
        f"{guidance['adapter_improved_other_metrics']})",
        f"reference transfer (classifier accuracy {report['reference_transfer']['classifier_accuracy']:.2f}) "
        "match / leak: "
        + "  ".join(f"{family} {v['match']:.2f}/{v['content_leak']:.2f}" for family, v in transfer.items()),
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
        *_fidelity_lines(report),
        f"(conditioning metrics: {', '.join(targets)})",
    ]
    return "\n".join(lines)
