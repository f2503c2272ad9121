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
  scene), the judge of the demo's reference transfer.

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
from ..io_utils import read_json
from ..loda.evaluate import correlation_metrics
from ..loda.synthetic import pseudo_mos
from ..metrics.learned import CONFIG_FILE, LearnedModel, LearnedModelConfig, fit
from .scenes import COLOURS, LANDSCAPE, Scene, background_tones, render_scene, scene_for

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


def make_zoo_data(
    seed: int, count: int, clean_fraction: float = 0.15, min_level: float = 0.0, size: int = TOY_SIZE, start: int = 0
) -> ZooData:
    """Scenes ``start ..`` of ``seed``, each clean (probability ``clean_fraction``) or degraded by a uniformly drawn
    family at a level ~ U(min_level, 1); image ``i`` depends only on ``(seed, i)``."""
    scenes = [scene_for(seed, index) for index in range(start, start + count)]
    clean = torch.from_numpy(np.stack([render_scene(scene, size) for scene in scenes])).permute(0, 3, 1, 2).float()
    clean = clean / 255
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
    images = (images.clamp(0, 1) * 255).round() / 255  # 8-bit, as every image the models will see
    return ZooData(
        images,
        family,
        level,
        pseudo_mos(images, clean, "ssim").float(),
        pseudo_mos(images, clean, "ms_ssim").float(),
        torch.tensor([composition_score(scene) for scene in scenes]),
    )


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


def train_zoo_model(name: str, out_dir: str | Path, recipe: ZooRecipe | None = None, progress: bool = True) -> dict:
    """Train the zoo model ``name`` (or ``recipe``) into ``out_dir`` and return its held-out report (also in its
    ``config.json`` under ``training``). A finished model with the same recipe is returned as it is; one made
    with another recipe is refused."""
    recipe = recipe or RECIPES[name]
    out_dir = Path(out_dir)
    if (out_dir / CONFIG_FILE).is_file():
        training = read_json(out_dir / CONFIG_FILE, "learned model config").get("training", {})
        if training.get("recipe") == json.loads(json.dumps(recipe.parameters())):
            return training
        raise ValueError(f"{out_dir} holds a zoo model made with another recipe; give another folder or delete it")
    started = time.perf_counter()
    data = make_zoo_data(recipe.seed, recipe.images, recipe.clean_fraction, recipe.min_level)
    targets = data.target(recipe.target)
    train_rows, test_rows = _split(len(targets), recipe.seed)
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
        data.images[train_rows],
        targets[train_rows],
        recipe.epochs,
        recipe.batch_size,
        recipe.lr,
        seed=recipe.seed,
        progress=progress,
    )
    report = {
        "name": name,
        "test": _test_report(model, data.images[test_rows], targets[test_rows]),
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
