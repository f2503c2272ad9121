"""The toy world's zoo of learned image models, trained by :mod:`iqa_adapter.metrics.learned` on toy scenes.

The paper conditions on, and measures with, many learned IQA and IAA models that mostly agree on what a good
photo is (its Table 2); the zoo is their toy analog, beside the toy LoDa of :mod:`iqa_adapter.toy.iqa_models`.
Every model learns from scenes of its own seed stream (none of them sees another's images, nor the base
model's training data), degraded by the KADID-like families of :mod:`iqa_adapter.distortions`:

* ``cnniqa`` (IQA): CNNIQA on 100 x MS-SSIM against the clean scene (the toy LoDa learns 100 x SSIM);
* ``aesthetic`` (IAA): a whole-image CNN that sees where things are (CoordConv) on
  ``100 x (0.5 x composition + 0.5 x SSIM)``: :func:`composition_score` rates the scene itself (object size,
  placement, colour contrast, background), so its targets depend on content as well as distortions;
* ``panel`` (the stand-in for people, never used for conditioning): a wider whole-image CNN on more images, on
  ``100 x (0.3 x composition + 0.35 x SSIM + 0.35 x MS-SSIM)``; :mod:`iqa_adapter.evaluation.preference` turns
  its scores into the votes of noisy participants;
* ``classifier``: a whole-image CNN that names the distortion family of an image (``clean`` or one of the 11
  families, levels 0.6 to 1; weaker levels of some families, quantisation above all, barely change a flat-colour
  scene), the judge of the demo's reference transfer. With ``generated_images`` it also learns from the base
  model's own samples, degraded the same way, so that it judges generated images against what the base model
  makes (its samples carry colour shifts and blotches that a classifier of rendered scenes reads as saturation,
  quantisation or JPEG). With ``round_trip_fraction`` that share of its rendered scenes is seen as the base
  model's VAE draws them (encoded, decoded; the label is the family applied before): a generated image is drawn
  by that decoder, which turns pixel noise into coloured blotches that a classifier of rendered scenes reads as
  quantisation (world 5's classifier: 72 % right on VAE round trips, 0 % on both noise families).

:func:`train_zoo_model` trains one on 80 % of its images, tests it on the other 20 % (SRCC, PLCC after the
logistic fit, KRCC, RMSE; accuracy and the confusion matrix for the classifier), and saves it with that report
in its ``config.json`` (``training``): use a score model as ``create_metric("learned:<folder>")``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..distortions import FAMILIES, distort
from ..images import to_8bit
from ..io_utils import read_json
from ..loda.evaluate import correlation_metrics
from ..loda.synthetic import pseudo_mos
from ..metrics.learned import CONFIG_FILE, LearnedModel, LearnedModelConfig, fit
from .scenes import COLOURS, LANDSCAPE, Scene, background_tones, render_scenes, scene_for

CLEAN = "clean"
CLASSES = (CLEAN, *FAMILIES)
TOY_SIZE = 32
SIZE_SCORE = {"large": 1.0, "small": 0.55}
POSITION_SCORE = {"centre": 1.0, "left": 0.75, "right": 0.75, "top": 0.5, "bottom": 0.5}
PATTERN_SCORE = {"plain": 1.0, "gradient": 0.9, "striped": 0.6, "dotted": 0.5, "checked": 0.3, LANDSCAPE: 0.9}
MAX_CONTRAST = 300.0  # RGB distance at which colour contrast scores 1


@dataclass(frozen=True)
class ZooRecipe:
    """How one zoo model is made: its network, its scenes' seed, its target and its training."""

    config: LearnedModelConfig
    seed: int
    images: int
    epochs: int
    target: str  # "ms_ssim", "aesthetic", "panel" or "family"
    clean_fraction: float = 0.15
    min_level: float = 0.0  # distortion levels ~ U(min_level, 1)
    batch_size: int = 64
    lr: float = 2e-3
    generated_images: int = 0  # classifier only: also this many base-model samples, degraded the same way
    round_trip_fraction: float = 0.0  # classifier only: this share of the rendered images, through the base's VAE

    @property
    def reads_base_model(self) -> bool:
        """Whether the model learns from the base model (its samples, or scenes redrawn by its VAE)."""
        return bool(self.generated_images or self.round_trip_fraction)

    def parameters(self) -> dict:
        """Everything the trained weights depend on (a finished model with other parameters is refused)."""
        return dataclasses.asdict(dataclasses.replace(self, config=dataclasses.replace(self.config, training={})))


RECIPES: dict[str, ZooRecipe] = {
    "cnniqa": ZooRecipe(
        LearnedModelConfig("cnniqa", description="toy CNNIQA (Kang et al. 2014) on 100 x MS-SSIM", hidden=256),
        seed=2500,
        images=12000,
        epochs=12,
        target="ms_ssim",
    ),
    "aesthetic": ZooRecipe(
        LearnedModelConfig("global_cnn", description="toy aesthetics: composition and SSIM", channels=(32, 64, 96)),
        seed=2600,
        images=12000,
        epochs=12,
        target="aesthetic",
    ),
    "panel": ZooRecipe(
        LearnedModelConfig(
            "global_cnn",
            description="toy panel judge (never used for conditioning)",
            channels=(48, 96, 128),
            hidden=192,
        ),
        seed=2700,
        images=16000,
        epochs=12,
        target="panel",
    ),
    "classifier": ZooRecipe(
        LearnedModelConfig(
            "global_cnn",
            task="classify",
            classes=CLASSES,
            description="toy distortion-family classifier",
            channels=(48, 96, 128),
            hidden=192,
            stem=32,
            coordinates=False,
        ),
        seed=2800,
        images=20000,
        epochs=16,
        target="family",
        clean_fraction=1 / len(CLASSES),
        min_level=0.6,
        lr=5e-4,
        # world 3 had 2,000 (held-out accuracy on generated images 0.88); sampling them was 744 of the classifier's
        # 1,259 s, the step the 90-minute rebuild could spare
        generated_images=500,
        # on world 5's base: VAE round trips read right 0.72 -> 0.91, rendered scenes 0.94 -> 0.93
        round_trip_fraction=0.5,
    ),
}


def composition_score(scene: Scene) -> float:
    """How pleasing a scene's content is, in [0, 1]: the mean over its objects of size, placement and colour
    contrast with the background, times the background's own score (landscapes: their sun's placement)."""
    tones = background_tones(scene.background)
    terms = []
    for item in scene.objects:
        contrast = min(
            min(float(np.linalg.norm(np.asarray(COLOURS[item.colour], float) - tone)) for tone in tones) / MAX_CONTRAST,
            1.0,
        )
        terms.append((SIZE_SCORE.get(item.size, 0.55) + POSITION_SCORE.get(item.position, 0.75) + contrast) / 3)
    return float(np.mean(terms)) * PATTERN_SCORE[scene.background.pattern]


@dataclass
class ZooData:
    """Rendered, degraded scenes with everything a target can be made of."""

    images: torch.Tensor  # (N, 3, size, size) float in [0, 1]
    family: torch.Tensor  # (N,) index into CLASSES
    level: torch.Tensor  # (N,)
    ssim: torch.Tensor  # (N,) 100 x SSIM against the clean scene
    ms_ssim: torch.Tensor  # (N,) 100 x MS-SSIM
    composition: torch.Tensor  # (N,) in [0, 1]

    def target(self, name: str) -> torch.Tensor:
        if name == "family":
            return self.family
        if name == "ms_ssim":
            return self.ms_ssim
        if name == "aesthetic":
            return 50 * self.composition + 0.5 * self.ssim
        if name == "panel":
            return 30 * self.composition + 0.35 * (self.ssim + self.ms_ssim)
        raise ValueError(f"unknown zoo target {name!r}")


def degrade(
    clean: torch.Tensor, seed: int, clean_fraction: float = 0.15, min_level: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image kept (probability ``clean_fraction``) or degraded by a uniformly drawn family at a level
    ~ U(min_level, 1), then rounded to 8 bits: ``(images, family index into CLASSES, level)``, seeded."""
    count = len(clean)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.rand(3, count, generator=generator)
    family = torch.where(
        draws[0] < clean_fraction, 0, 1 + (draws[1] * len(FAMILIES)).long().clamp_max(len(FAMILIES) - 1)
    )
    level = torch.where(family == 0, 0.0, min_level + (1 - min_level) * draws[2])
    images = clean.clone()
    for index, name in enumerate(FAMILIES, start=1):
        selected = torch.nonzero(family == index).flatten()
        if len(selected):
            images[selected] = distort(clean[selected], name, level[selected], generator)
    return to_8bit(images), family, level  # 8-bit, as every image the models will see


def make_zoo_data(
    seed: int, count: int, clean_fraction: float = 0.15, min_level: float = 0.0, size: int = TOY_SIZE, start: int = 0
) -> ZooData:
    """Scenes ``start ..`` of ``seed``, rendered and passed through :func:`degrade`; image ``i`` depends only on
    ``(seed, i)``."""
    scenes = [scene_for(seed, index) for index in range(start, start + count)]
    clean = render_scenes(scenes, size)
    images, family, level = degrade(clean, seed, clean_fraction, min_level)
    return ZooData(
        images,
        family,
        level,
        pseudo_mos(images, clean, "ssim").float(),
        pseudo_mos(images, clean, "ms_ssim").float(),
        torch.tensor([composition_score(scene) for scene in scenes]),
    )


def base_model_samples(pipe, seed: int, count: int, steps: int, guidance: float) -> torch.Tensor:
    """``count`` samples (N, 3, H, W) in [0, 1] of a toy base pipeline for the captions of scenes of ``seed``, one
    seed each: the images a classifier of generated images has to read."""
    from ..generation import generate
    from ..images import rgb_tensor

    prompts = [scene_for(seed, index).caption for index in range(count)]
    results = generate(
        pipe, None, prompts, seeds=list(range(count)), steps=steps, guidance=guidance, batch_size=64, progress=False
    )
    return torch.stack([rgb_tensor(result.image) for result in results])


def _split(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * count)
    return order[:cut], order[cut:]


def _test_report(model: LearnedModel, images: torch.Tensor, targets: torch.Tensor) -> dict:
    with torch.no_grad():
        output = torch.cat([model(chunk) for chunk in images.split(512)])
    if model.config.task == "classify":
        predicted, classes = output.argmax(dim=1), model.config.classes
        confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
        confusion.index_put_((targets.long(), predicted), torch.ones_like(predicted), accumulate=True)
        return {
            "accuracy": float((predicted == targets).float().mean()),
            "images": len(images),
            "per_class": {
                name: float(confusion[i, i] / confusion[i].sum().clamp_min(1)) for i, name in enumerate(classes)
            },
        }
    metrics = correlation_metrics(output.double().numpy(), targets.double().numpy())
    return {**{key: float(value) for key, value in metrics.items()}, "images": len(images)}


def train_zoo_model(
    name: str, out_dir: str | Path, recipe: ZooRecipe | None = None, base_pipeline=None, progress: bool = True
) -> dict:
    """Train the zoo model ``name`` (or ``recipe``) into ``out_dir`` and return its held-out report (also in its
    ``config.json`` under ``training``). A recipe with ``generated_images`` or ``round_trip_fraction`` needs
    ``base_pipeline`` (the toy base model whose samples it learns from, or whose VAE redraws the scenes; samples are
    split 80/20 too, and the report gives the accuracy on each part: rendered, round trip, generated).
    A finished model with the same recipe is returned as it is; one made with another recipe is refused."""
    recipe = recipe or RECIPES[name]
    if not 0 <= recipe.round_trip_fraction <= 1:  # also refuses NaN
        raise ValueError(f"round_trip_fraction must lie in [0, 1], got {recipe.round_trip_fraction}")
    if recipe.reads_base_model and (base_pipeline is None or recipe.target != "family"):
        raise ValueError(
            "generated_images and round_trip_fraction need the base pipeline and the family target (the classifier)"
        )
    out_dir = Path(out_dir)
    if (out_dir / CONFIG_FILE).is_file():
        training = read_json(out_dir / CONFIG_FILE, "learned model config").get("training", {})
        if training.get("recipe") == json.loads(json.dumps(recipe.parameters())):
            return training
        raise ValueError(f"{out_dir} holds a zoo model made with another recipe; give another folder or delete it")
    started = time.perf_counter()
    data = make_zoo_data(recipe.seed, recipe.images, recipe.clean_fraction, recipe.min_level)
    images, targets = data.images, data.target(recipe.target)
    train_rows, test_rows = _split(len(targets), recipe.seed)
    parts = {"rendered": test_rows}
    if recipe.round_trip_fraction:
        from ..pipelines import vae_round_trip

        chosen = torch.rand(len(images), generator=torch.Generator().manual_seed(recipe.seed + 2)) < (
            recipe.round_trip_fraction
        )
        with torch.no_grad():
            images[chosen] = to_8bit(vae_round_trip(base_pipeline.vae, images[chosen]))
        parts = {"rendered": test_rows[~chosen[test_rows]], "round_trip": test_rows[chosen[test_rows]]}
    if recipe.generated_images:
        from .world import GUIDANCE_SCALE, SAMPLING_STEPS

        samples = base_model_samples(
            base_pipeline, recipe.seed + 1, recipe.generated_images, SAMPLING_STEPS, GUIDANCE_SCALE
        )
        generated, family, _ = degrade(samples, recipe.seed + 1, recipe.clean_fraction, recipe.min_level)
        more_train, more_test = _split(len(generated), recipe.seed + 1)
        offset = len(images)
        images, targets = torch.cat([images, generated]), torch.cat([targets, family])
        train_rows, test_rows = torch.cat([train_rows, more_train + offset]), torch.cat([test_rows, more_test + offset])
        parts["generated"] = more_test + offset
    config = recipe.config
    if config.task == "score":
        values = targets[train_rows]
        config = dataclasses.replace(
            config,
            score_mean=float(values.mean()),
            score_std=float(values.std()),
            score_range=(float(values.min()), float(values.max())),
        )
    torch.manual_seed(recipe.seed)
    model = LearnedModel(config)
    losses = fit(
        model,
        images[train_rows],
        targets[train_rows],
        recipe.epochs,
        recipe.batch_size,
        recipe.lr,
        seed=recipe.seed,
        progress=progress,
    )
    test = _test_report(model, images[test_rows], targets[test_rows])
    if len(parts) > 1:
        test["parts"] = {
            part: _test_report(model, images[rows], targets[rows])["accuracy"] for part, rows in parts.items()
        }
    report = {
        "name": name,
        "test": test,
        "train_images": len(train_rows),
        "final_loss": losses[-1],
        "seconds": round(time.perf_counter() - started, 1),
        "recipe": recipe.parameters(),
    }
    model.config = dataclasses.replace(config, training=report)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    model.save_pretrained(partial)
    if out_dir.exists():
        out_dir.rmdir()  # only an empty folder is replaced (a finished one returned above)
    partial.rename(out_dir)
    return json.loads(json.dumps(report))


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    classes: int,
    weight_decay: float = 1e-3,
) -> float:
    """Held-out accuracy of a multinomial logistic regression (L-BFGS, L2 penalty) on standardised features: how
    linearly separable the classes are in a feature space."""
    mean, std = train_features.mean(dim=0), train_features.std(dim=0).clamp_min(1e-6)
    inputs = ((train_features - mean) / std).double()
    torch.manual_seed(0)
    linear = torch.nn.Linear(inputs.shape[1], classes).double()
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = (
            torch.nn.functional.cross_entropy(linear(inputs), train_labels.long())
            + weight_decay * linear.weight.square().sum()
        )
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        predicted = linear(((test_features - mean) / std).double()).argmax(dim=1)
    return float((predicted == test_labels).double().mean())
