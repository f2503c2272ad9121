"""The toy world: where its models live, and how they are rebuilt from scratch with the project's own code.

A world is a folder::

    base/                 the toy text-to-image pipeline (diffusers StableDiffusionPipeline folder)
    loda/                 the toy LoDa checkpoint (``loda:<folder>``), calibrated to the pseudo-MOS scale
    niqe.safetensors      NIQE fitted on clean toy scenes (8 px patches)
    adapter/              the IQA-Adapter conditioned on ``loda`` and ``niqe`` scores
    reference_adapter/    the reference-based IQA-Adapter on the toy LoDa's distortion tokens
    world.json            how it was built: settings, the equivalent commands, the time of every step (summed
                          over resumed runs; ``interrupted_runs`` counts the runs killed inside a step, whose
                          unfinished work is not in the time)

The package ships one (:func:`shipped_world`), the embedded default of ``iqa-adapter generate`` and
``iqa-adapter demo``. :func:`build_world` rebuilds one in any folder (its scratch data, about 1 GB, in a
``-work`` folder beside it), step by step:

1. ``iqa-adapter toy make-data``: 20,000 captioned toy images at 32 px, 80 % degraded at random;
2. ``iqa-adapter toy train-base``: the VAE, then the UNet and text encoder, on them;
3. the toy IQA models (:mod:`iqa_adapter.toy.iqa_models`): a distortion dataset with a full-reference
   pseudo-MOS, the tiny LoDa trained on it, NIQE fitted on clean scenes;
4. ``iqa-adapter annotate``: the training images scored with ``loda`` and ``niqe``;
5. ``iqa-adapter train``: the score adapter on the frozen toy base, from a latent/text cache;
6. ``iqa-adapter train --reference-features``: the reference-based adapter.

The reference adapter names its metric by a path relative to its own folder (``loda:../loda``), so a world
folder can be moved or shipped as a whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..io_utils import write_json

WORLD_FILE = "world.json"
ADAPTER_METRICS = ("loda", "niqe")
REFERENCE_LAYERS = ("distortion_tokens",)
RELATIVE_LODA = "loda:../loda"
RELATIVE_BASE = "../base"
# Sampling settings for the toy base model (its caption-following check and the demo use them too).
SAMPLING_STEPS = 20
GUIDANCE_SCALE = 4.0


@dataclass(frozen=True)
class ToyWorld:
    """The paths of a toy world's models."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def loda(self) -> Path:
        return self.root / "loda"

    @property
    def niqe(self) -> Path:
        return self.root / "niqe.safetensors"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def reference_adapter(self) -> Path:
        return self.root / "reference_adapter"

    def check(self) -> ToyWorld:
        """Raise FileNotFoundError, with the fix, when a model is missing."""
        missing = [
            path.name
            for path in (self.base, self.loda, self.niqe, self.adapter, self.reference_adapter)
            if not path.exists()
        ]
        if missing:
            raise FileNotFoundError(
                f"the toy world in {self.root} lacks {', '.join(missing)}; rebuild it with `iqa-adapter demo --retrain`"
            )
        return self

    def describe(self) -> dict:
        """Where the world is, its size on disk and how it was built."""
        size = sum(path.stat().st_size for path in self.root.rglob("*") if path.is_file())
        built = json.loads((self.root / WORLD_FILE).read_text()) if (self.root / WORLD_FILE).is_file() else {}
        return {"root": str(self.root), "bytes": size, "built": built}


def is_toy_world_model(path: str | Path | None) -> bool:
    """Whether ``path`` is a model folder of a toy world (a folder beside the world's ``world.json``)."""
    return path is not None and (Path(path).expanduser().parent / WORLD_FILE).is_file()


def shipped_world() -> ToyWorld:
    """The toy world that ships with the package (the default model of ``generate`` and ``demo``)."""
    return ToyWorld(Path(str(resources.files("iqa_adapter") / "toy" / "world")))


@dataclass
class WorldSettings:
    """How big each part of a rebuilt world is. The defaults made the shipped world; :meth:`miniature` is the
    test suite's seconds-long version of the same pipeline."""

    images: int = 20000
    base_overrides: dict = field(default_factory=dict)  # fields of ToyBaseConfig
    iqa_references: int = 1000
    loda_epochs: int = 7
    niqe_images: int = 2000
    adapter_steps: int = 1500
    adapter_batch_size: int = 32
    adapter_lr: float = 1e-3
    reference_steps: int = 800
    seed: int = 0

    @classmethod
    def miniature(cls) -> WorldSettings:
        return cls(
            images=48,
            base_overrides={"vae_steps": 2, "unet_steps": 2, "vae_batch_size": 8, "unet_batch_size": 8},
            iqa_references=4,
            loda_epochs=1,
            niqe_images=16,
            adapter_steps=2,
            adapter_batch_size=8,
            reference_steps=2,
        )


def build_world(root: str | Path, settings: WorldSettings | None = None, progress: bool = True) -> ToyWorld:
    """Rebuild every model of a toy world in ``root`` (scratch data in ``<root>-work`` beside it); resumable step
    by step."""
    from ..annotate import annotate
    from ..training import TrainConfig, train
    from .base_model import PIPELINE_DIR, ToyBaseConfig, train_base_model
    from .data import load_images, write_toy_dataset
    from .iqa_models import fit_toy_niqe, make_toy_iqa_dataset, train_toy_loda

    settings = settings or WorldSettings()
    root = Path(root).absolute()
    world, work = ToyWorld(root), root.with_name(f"{root.name}-work")
    log: dict = {"settings": dataclasses.asdict(settings), "steps": _earlier_steps(root / WORLD_FILE, settings)}

    def step(name: str, command: str, run) -> None:
        """Run one step; its time adds up over resumed runs (a killed run's unfinished work is not counted)."""
        earlier = log["steps"].get(name, {})
        entry = {
            "command": command,
            "seconds": earlier.get("seconds", 0.0),
            "finished": False,
            "interrupted_runs": earlier.get("interrupted_runs", 0) + (earlier.get("finished") is False),
        }
        log["steps"][name] = entry
        write_json(root / WORLD_FILE, log)
        started = time.perf_counter()
        if progress:
            print(f"[toy world] {name}: {command}", flush=True)
        run()
        entry.update(seconds=round(entry["seconds"] + time.perf_counter() - started, 1), finished=True)
        write_json(root / WORLD_FILE, log)

    data = work / "data"
    step(
        "data",
        f"iqa-adapter toy make-data --out {data} --num-images {settings.images} --seed {settings.seed}",
        lambda: write_toy_dataset(data, settings.images, seed=settings.seed, progress=progress),
    )

    base_config = dataclasses.replace(ToyBaseConfig(), **settings.base_overrides)

    def base() -> None:
        images, captions = load_images(data, size=base_config.size, progress=progress)
        train_base_model(images, captions, work / "base", base_config, progress=progress)
        _replace(work / "base" / PIPELINE_DIR, world.base)

    step("base", f"iqa-adapter toy train-base --data {data} --out {work / 'base'}", base)

    def iqa() -> None:
        iqa_data = work / "iqa_data"
        make_toy_iqa_dataset(iqa_data, settings.iqa_references, progress=progress)
        train_toy_loda(world.loda, iqa_data, epochs=settings.loda_epochs, progress=progress)
        fit_toy_niqe(world.niqe, num_images=settings.niqe_images, check_data=iqa_data, progress=progress)

    step("iqa_models", "make_toy_iqa_dataset, train_toy_loda, fit_toy_niqe (iqa_adapter.toy.iqa_models)", iqa)

    scores = work / "scores"
    columns = [f"loda=loda:{world.loda}", "niqe"]
    step(
        "annotate",
        f"iqa-adapter annotate --data {data} --metrics {','.join(columns)} --metric-option "
        f"niqe.params={world.niqe} --resize none --out {scores}",
        lambda: annotate(
            str(data),
            columns,
            scores,
            resize=None,
            num_workers=0,
            batch_size=256,
            metric_options={"niqe": {"params": str(world.niqe)}},
            progress=progress,
        ),
    )

    common = dict(
        base=str(world.base),
        data=str(data),
        resolution=base_config.size,
        batch_size=settings.adapter_batch_size,
        learning_rate=settings.adapter_lr,
        num_workers=0,
        checkpoint_every=500,
        resume="latest",
        seed=settings.seed,
        progress=progress,
    )

    def adapter() -> None:
        result = train(
            TrainConfig(
                scores=str(scores),
                metrics=list(ADAPTER_METRICS),
                out=str(work / "adapter"),
                default_target="p50",
                cache_dir=str(work / "cache"),
                max_steps=settings.adapter_steps,
                **common,
            )
        )
        _replace(result.adapter_dir, world.adapter)

    step(
        "adapter",
        f"iqa-adapter train --base {world.base} --data {data} --scores {scores} --metrics "
        f"{','.join(ADAPTER_METRICS)} --default-target p50 --resolution {base_config.size} --batch-size "
        f"{settings.adapter_batch_size} --learning-rate {settings.adapter_lr} --max-steps "
        f"{settings.adapter_steps} --cache-dir {work / 'cache'} --out {work / 'adapter'}",
        adapter,
    )

    spec = f"loda:{world.loda}:{','.join(REFERENCE_LAYERS)}"

    def reference_adapter() -> None:
        result = train(
            TrainConfig(
                scores=None,
                metrics=[],
                reference_features=spec,
                out=str(work / "reference_adapter"),
                max_steps=settings.reference_steps,
                **common,
            )
        )
        _replace(result.adapter_dir, world.reference_adapter)
        config_file = world.reference_adapter / "config.json"  # name the LoDa beside it, so the world can move
        config = json.loads(config_file.read_text())
        config["reference"]["metric"] = RELATIVE_LODA
        write_json(config_file, config)

    step(
        "reference_adapter",
        f"iqa-adapter train --reference-features {spec} --base {world.base} --data {data} "
        f"--max-steps {settings.reference_steps} --out {work / 'reference_adapter'}",
        reference_adapter,
    )
    log["seconds"] = round(sum(entry["seconds"] for entry in log["steps"].values()), 1)
    write_json(root / WORLD_FILE, log)
    make_portable(world)
    return world.check()


def make_portable(world: ToyWorld) -> None:
    """Rewrite the world's JSON records without the paths of the machine that built it: the adapters name their
    base model ``../base`` (relative to their own folder, like the reference adapter's ``loda:../loda``), and
    every other path becomes relative to the folder holding the world (where the recorded commands run)."""
    prefix = f"{world.root.parent}{os.sep}"

    def relative(value):
        if isinstance(value, str):
            return value.replace(prefix, "")
        if isinstance(value, list):
            return [relative(item) for item in value]
        if isinstance(value, dict):
            return {key: relative(item) for key, item in value.items()}
        return value

    for path in sorted(world.root.rglob("*.json")):
        data = json.loads(path.read_text())
        portable = relative(data)
        if path.parent in (world.adapter, world.reference_adapter) and path.name == "config.json":
            portable["base_model"] = RELATIVE_BASE
        if path.name == WORLD_FILE:
            portable["paths"] = "relative to the folder that holds this world; the commands run there"
        if portable != data:
            write_json(path, portable)


def _earlier_steps(log_file: Path, settings: WorldSettings) -> dict:
    """The step log of an earlier, resumed build of the same world (empty when there is none)."""
    if not log_file.is_file():
        return {}
    earlier = json.loads(log_file.read_text())
    return earlier.get("steps", {}) if earlier.get("settings") == dataclasses.asdict(settings) else {}


def _replace(source: Path, target: Path) -> None:
    """Copy a finished model folder into the world (replacing an older one)."""
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    shutil.copytree(source, temporary)
    shutil.rmtree(target, ignore_errors=True)
    temporary.rename(target)
