"""The toy world: where its models live, and how they are rebuilt from scratch with the project's own code.

A world is a folder::

    base/                 the toy text-to-image pipeline (diffusers StableDiffusionPipeline folder)
    loda/                 the toy LoDa checkpoint (``loda:<folder>``), calibrated to the pseudo-MOS scale
    niqe.safetensors      NIQE fitted on clean toy scenes (8 px patches)
    cnniqa/ aesthetic/    the zoo's learned IQA and IAA models (``learned:<folder>``, :mod:`iqa_adapter.toy.zoo`)
    panel/ classifier/    the judge that stands in for people and the distortion-family classifier (never used
                          for conditioning)
    adapter/              the main IQA-Adapter, conditioned on ``cnniqa`` and ``aesthetic`` scores (the paper's
                          "TOPIQ + LAION-AES": one IQA and one IAA model)
    adapters/<metric>/    one IQA-Adapter per learned model (``loda``, ``cnniqa``, ``aesthetic``): the rows of the
                          cross-metric RelGain matrix
    reference_adapter/    the reference-based IQA-Adapter on CNNIQA's features (``REFERENCE_LAYERS``)
    world.json            how it was built: settings, the equivalent commands, the time of every step (summed
                          over resumed runs; ``interrupted_runs`` counts the runs killed inside a step, whose
                          unfinished work is not in the time), their sum ``seconds`` and the build's wall-clock
                          ``wall_seconds`` (less than the sum: two lanes run at once)

The package ships one (:func:`shipped_world`), the embedded default of ``iqa-adapter generate`` and
``iqa-adapter demo``. :func:`build_world` rebuilds one in any folder (its scratch data, about 1 GB, in a
``-work`` folder beside it), step by step:

1. ``iqa-adapter toy make-data``: 20,000 captioned toy images at 32 px, half of them degraded at random;
2. ``iqa-adapter toy train-base``: the VAE, then the UNet and text encoder, on them;
3. the toy IQA models (:mod:`iqa_adapter.toy.iqa_models`): a distortion dataset with a full-reference
   pseudo-MOS, the tiny LoDa trained on it, NIQE fitted on clean scenes;
4. the zoo (:mod:`iqa_adapter.toy.zoo`): CNNIQA, the aesthetics model, the panel judge and the classifier, each
   on scenes of its own (the classifier also on the base model's samples and on scenes redrawn by its VAE), one step each;
5. ``iqa-adapter annotate --through-vae``: the training images, as the base model's VAE reproduces them, scored
   with ``loda``, ``niqe``, ``cnniqa`` and ``aesthetic`` (the toy VAE cannot draw pixel noise, so the scores of the
   images themselves teach the adapters to ask for noise that the decoder turns into blotches);
6. ``iqa-adapter cache``, then ``iqa-adapter train``: one latent/text cache of the training images, then the main
   adapter and one adapter per learned model on the frozen toy base, all reading it (side by side in the lanes);
7. ``iqa-adapter train --reference-features``: the reference-based adapter.

Steps 1 and 2 run in the building process on two threads (:data:`IN_PROCESS_THREADS`); the others in two
one-thread worker processes at once (``lanes``), each step as soon as the steps it reads are finished, in the order
that :func:`lane_order` plans with the step times of the shipped world's build: on 2 cores
two one-thread processes do 1.4 times the work of one two-thread process (toy UNet training step: 0.54 s with two
threads, 0.76 s each for two one-thread processes side by side), and a step gets the same weights in either lane.

The reference adapter names its metric by a path relative to its own folder (``learned:../cnniqa``), so a world
folder can be moved or shipped as a whole.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..io_utils import write_json

WORLD_FILE = "world.json"
ZOO_MODELS = ("cnniqa", "aesthetic", "panel", "classifier")
CONDITIONING_MODELS = ("loda", "cnniqa", "aesthetic")  # the learned models adapters are trained on
ADAPTER_METRICS = ("cnniqa", "aesthetic")  # the main adapter's
ADAPTER_NAMES = ("main", "reference", *CONDITIONING_MODELS)  # ToyWorld.named_adapter's names
SCORED_METRICS = ("loda", "niqe", "cnniqa", "aesthetic")  # the columns annotate writes
# the reference adapter's features: CNNIQA's pooled filter responses and hidden layer tell the distortion families
# apart better than the toy LoDa's distortion tokens (linear probe on degraded toy scenes: 0.67 vs 0.42, chance 0.08)
REFERENCE_MODEL = "cnniqa"
REFERENCE_LAYERS = ("pooled", "hidden")
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

    def zoo(self, name: str) -> Path:
        """The folder of a zoo model (:data:`ZOO_MODELS`)."""
        return self.root / name

    def metric_adapter(self, metric: str) -> Path:
        """The adapter conditioned on one learned model (:data:`CONDITIONING_MODELS`)."""
        return self.root / "adapters" / metric

    def named_adapter(self, name: str) -> Path:
        """One of the world's adapters by name: ``main``, ``reference`` or a learned model's
        (:data:`CONDITIONING_MODELS`); the CLI's ``--adapter toy:<name>``."""
        if name == "main":
            return self.adapter
        if name == "reference":
            return self.reference_adapter
        if name in CONDITIONING_MODELS:
            return self.metric_adapter(name)
        raise ValueError(
            f"the toy world has no adapter {name!r}; its adapters: {', '.join(ADAPTER_NAMES)} (e.g. --adapter toy:cnniqa)"
        )

    def metric_spec(self, name: str) -> str:
        """The registry name of one of the world's learned models: ``loda:<folder>`` or ``learned:<folder>``."""
        return f"loda:{self.loda}" if name == "loda" else f"learned:{self.zoo(name)}"

    def check(self) -> ToyWorld:
        """Raise FileNotFoundError, with the fix, when a model is missing."""
        models = (
            self.base,
            self.loda,
            self.niqe,
            *map(self.zoo, ZOO_MODELS),
            self.adapter,
            *map(self.metric_adapter, CONDITIONING_MODELS),
            self.reference_adapter,
        )
        missing = [str(path.relative_to(self.root)) for path in models if not path.exists()]
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
    zoo_overrides: dict = field(default_factory=dict)  # fields of ZooRecipe, for every zoo model
    adapter_steps: int = 1500
    metric_adapter_steps: int = 800  # each single-model adapter of the RelGain matrix
    adapter_batch_size: int = 32
    adapter_lr: float = 1e-3
    # world 2: 800 -> 2400 steps, generated images read as the reference's family 0.18 -> 0.23; 1000 shortens the
    # rebuild (worlds 3 and 4: family read in 0.16)
    reference_steps: int = 1000
    # lambda the world's adapters generate with by default: they train at 1.0 (the official recipe), and at the
    # paper's 0.5 the toy adapters' effect is half of what they learned (measured: the score adapters' p1-p99 gaps
    # and the reference transfer grow from 0.5 to 1.0; at 2.0 single-metric adapters overshoot their own metric)
    generation_scale: float = 1.0
    seed: int = 0

    @classmethod
    def miniature(cls) -> WorldSettings:
        return cls(
            images=48,
            base_overrides={"vae_steps": 2, "unet_steps": 2, "vae_batch_size": 8, "unet_batch_size": 8},
            iqa_references=4,
            loda_epochs=1,
            niqe_images=16,
            zoo_overrides={"images": 60, "epochs": 1, "generated_images": 5},
            adapter_steps=2,
            metric_adapter_steps=2,
            adapter_batch_size=8,
            reference_steps=2,
        )


@dataclass(frozen=True)
class WorldStep:
    """One step of a build: what it runs, the equivalent command (recorded in ``world.json``) and the steps whose
    results it reads."""

    name: str
    command: str
    run: Callable[[], None]
    needs: tuple[str, ...] = ()


def world_steps(root: Path, settings: WorldSettings, progress: bool = True) -> list[WorldStep]:
    """The steps that build a world in ``root`` (scratch data in ``<root>-work``), in the order one lane runs them."""
    from ..annotate import annotate
    from ..training import TrainConfig, train
    from ..training.cache import precompute_cache
    from .base_model import PIPELINE_DIR, ToyBaseConfig, train_base_model
    from .data import load_images, write_toy_dataset
    from .iqa_models import fit_toy_niqe, make_toy_iqa_dataset, train_toy_loda
    from .zoo import RECIPES, train_zoo_model

    world, work = ToyWorld(root), root.with_name(f"{root.name}-work")
    base_config = dataclasses.replace(ToyBaseConfig(), **settings.base_overrides)
    data = work / "data"
    steps = [
        WorldStep(
            "data",
            f"iqa-adapter toy make-data --out {data} --num-images {settings.images} --seed {settings.seed}",
            lambda: write_toy_dataset(data, settings.images, seed=settings.seed, progress=progress),
        )
    ]

    def base() -> None:
        images, captions = load_images(data, size=base_config.size, progress=progress)
        train_base_model(images, captions, work / "base", base_config, progress=progress)
        _replace(work / "base" / PIPELINE_DIR, world.base)

    steps.append(WorldStep("base", f"iqa-adapter toy train-base --data {data} --out {work / 'base'}", base, ("data",)))

    def iqa() -> None:
        iqa_data = work / "iqa_data"
        make_toy_iqa_dataset(iqa_data, settings.iqa_references, progress=progress)
        train_toy_loda(world.loda, iqa_data, epochs=settings.loda_epochs, progress=progress)
        fit_toy_niqe(world.niqe, num_images=settings.niqe_images, check_data=iqa_data, progress=progress)

    steps.append(
        WorldStep("iqa_models", "make_toy_iqa_dataset, train_toy_loda, fit_toy_niqe (iqa_adapter.toy.iqa_models)", iqa)
    )

    def zoo_model(name: str) -> Callable[[], None]:
        def run() -> None:
            from .base_model import load_toy_pipeline

            overrides = {
                key: value
                for key, value in settings.zoo_overrides.items()  # base samples: the classifier only
                if key != "generated_images" or RECIPES[name].generated_images
            }
            recipe = dataclasses.replace(RECIPES[name], **overrides)
            pipe = load_toy_pipeline(world.base) if recipe.reads_base_model else None
            train_zoo_model(name, world.zoo(name), recipe, base_pipeline=pipe, progress=progress)

        return run

    for name in ZOO_MODELS:
        needs = ("base",) if RECIPES[name].reads_base_model else ()
        steps.append(WorldStep(f"zoo_{name}", f"train_zoo_model {name} (iqa_adapter.toy.zoo)", zoo_model(name), needs))

    scores = work / "scores"
    columns = {name: world.metric_spec(name) if name != "niqe" else "niqe" for name in SCORED_METRICS}
    entries = [f"{column}={spec}" if column != spec else column for column, spec in columns.items()]
    steps.append(
        WorldStep(
            "annotate",
            f"iqa-adapter annotate --data {data} --metrics {','.join(entries)} --metric-option "
            f"niqe.params={world.niqe} --resize none --through-vae {world.base} --out {scores}",
            lambda: annotate(
                str(data),
                entries,
                scores,
                resize=None,
                num_workers=0,
                batch_size=256,
                metric_options={"niqe": {"params": str(world.niqe)}},
                through_vae=str(world.base),
                progress=progress,
            ),
            ("data", "base", "iqa_models", *(f"zoo_{name}" for name in SCORED_METRICS if name in ZOO_MODELS)),
        )
    )

    cache = work / "cache"
    steps.append(
        WorldStep(
            "cache",
            f"iqa-adapter cache --base {world.base} --data {data} --resolution {base_config.size} --cache-dir {cache}",
            lambda: precompute_cache(
                str(world.base), str(data), cache, resolution=base_config.size, num_workers=0, progress=progress
            ),
            ("data", "base"),
        )
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

    def score_adapter(metrics: tuple[str, ...], steps: int, out: Path, target: Path) -> Callable[[], None]:
        def run() -> None:
            result = train(
                TrainConfig(
                    scores=str(scores),
                    metrics=list(metrics),
                    out=str(out),
                    default_target="p50",
                    cache_dir=str(cache),
                    max_steps=steps,
                    **common,
                )
            )
            _replace(result.adapter_dir, target)
            _set_default_scale(target, settings.generation_scale)

        return run

    def train_command(metrics: tuple[str, ...], steps: int, out: Path) -> str:
        return (
            f"iqa-adapter train --base {world.base} --data {data} --scores {scores} --metrics {','.join(metrics)} "
            f"--default-target p50 --resolution {base_config.size} --batch-size {settings.adapter_batch_size} "
            f"--learning-rate {settings.adapter_lr} --max-steps {steps} --cache-dir {cache} --out {out}"
        )

    steps.append(
        WorldStep(
            "adapter",
            train_command(ADAPTER_METRICS, settings.adapter_steps, work / "adapter"),
            score_adapter(ADAPTER_METRICS, settings.adapter_steps, work / "adapter", world.adapter),
            ("base", "annotate", "cache"),
        )
    )
    for metric in CONDITIONING_MODELS:
        out = work / "adapters" / metric
        steps.append(
            WorldStep(
                f"adapter_{metric}",
                train_command((metric,), settings.metric_adapter_steps, out),
                score_adapter((metric,), settings.metric_adapter_steps, out, world.metric_adapter(metric)),
                ("base", "annotate", "cache"),
            )
        )

    spec = f"{world.metric_spec(REFERENCE_MODEL)}:{','.join(REFERENCE_LAYERS)}"

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
        config_file = world.reference_adapter / "config.json"  # name the model beside it, so the world can move
        config = json.loads(config_file.read_text())
        config["reference"]["metric"] = f"learned:../{REFERENCE_MODEL}"
        config["default_scale"] = settings.generation_scale
        write_json(config_file, config)

    steps.append(
        WorldStep(
            "reference_adapter",
            f"iqa-adapter train --reference-features {spec} --base {world.base} --data {data} "
            f"--max-steps {settings.reference_steps} --out {work / 'reference_adapter'}",
            reference_adapter,
            ("base", f"zoo_{REFERENCE_MODEL}"),
        )
    )
    return steps


IN_PROCESS_STEPS = ("data", "base")  # in the build's process; every later step runs in a one-thread lane
# torch threads of the in-process steps: a fixed count, so that every machine computes the same weights (a toy UNet
# training step: 0.54 s on 2 threads, 0.83 s on 1, on an idle 2-core machine)
IN_PROCESS_THREADS = 2


def build_world(
    root: str | Path,
    settings: WorldSettings | None = None,
    progress: bool = True,
    lanes: int | None = None,
    threads: int = IN_PROCESS_THREADS,
) -> ToyWorld:
    """Rebuild every model of a toy world in ``root`` (scratch data in ``<root>-work`` beside it).

    The data and the base model are made in this process with ``threads`` torch threads (the caller's count is
    restored afterwards); then the other steps run in ``lanes``
    worker processes of one thread each (default: 2 where there are 2 cores), each step as soon as the steps it
    reads are finished. Every step thus runs with the same number of threads whatever the machine, so a rebuild
    gives the same weights with one lane or two. Resumable step by step: run again after an interruption, it skips
    the steps that ``world.json`` records as finished (for the same settings) and resumes the unfinished ones from
    their checkpoints; worker processes die with the build.
    """
    settings = settings or WorldSettings()
    root = Path(root).absolute()
    lanes = lanes or min(2, os.cpu_count() or 1)
    from .base_model import ToyBaseConfig

    base_config = dataclasses.replace(ToyBaseConfig(), **settings.base_overrides)
    recipe = {"settings": dataclasses.asdict(settings), "base_config": base_config.to_dict()}
    log: dict = {**recipe, "steps": _earlier_steps(root / WORLD_FILE, recipe)}
    log["wall_seconds"] = json.loads((root / WORLD_FILE).read_text()).get("wall_seconds", 0.0) if log["steps"] else 0.0
    build_started = time.perf_counter()
    steps = world_steps(root, settings, progress)
    entries: dict[str, dict] = {}

    def begin(step: WorldStep) -> bool:
        """Record that ``step`` starts; False when an earlier run of the same settings finished it."""
        earlier = log["steps"].get(step.name, {})
        if earlier.get("finished"):
            if progress:
                print(f"[toy world] {step.name}: finished by an earlier run", flush=True)
            return False
        entries[step.name] = {
            "command": step.command,
            "seconds": earlier.get("seconds", 0.0),
            "finished": False,
            "interrupted_runs": earlier.get("interrupted_runs", 0) + (earlier.get("finished") is False),
            "started": time.perf_counter(),
        }
        log["steps"][step.name] = {key: value for key, value in entries[step.name].items() if key != "started"}
        write_json(root / WORLD_FILE, log)
        if progress:
            print(f"[toy world] {step.name}: {step.command}", flush=True)
        return True

    def finish(step: WorldStep) -> None:
        entry = entries.pop(step.name)
        seconds = round(entry["seconds"] + time.perf_counter() - entry["started"], 1)
        log["steps"][step.name] = {**log["steps"][step.name], "seconds": seconds, "finished": True}
        write_json(root / WORLD_FILE, log)

    import torch

    callers_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for step in steps:
            if step.name in IN_PROCESS_STEPS and begin(step):
                step.run()
                finish(step)
        lane_steps = lane_order(
            [step for step in steps if step.name not in IN_PROCESS_STEPS], recorded_step_seconds(), lanes
        )
        _run_in_lanes(lane_steps, lanes, root, settings, progress, begin, finish, log)
    finally:
        log["wall_seconds"] = round(log["wall_seconds"] + time.perf_counter() - build_started, 1)
        log["lanes"], log["threads"] = lanes, threads
        torch.set_num_threads(callers_threads)
        write_json(root / WORLD_FILE, log)
    log["seconds"] = round(sum(entry["seconds"] for entry in log["steps"].values()), 1)
    write_json(root / WORLD_FILE, log)
    make_portable(ToyWorld(root))
    return ToyWorld(root).check()


LANE_PLANS = 2000  # seeded shuffles that lane_order tries beside the longest-chain-first order


def lane_order(steps: list[WorldStep], seconds: dict[str, float], lanes: int = 2) -> list[WorldStep]:
    """``steps`` in the order the lanes should take them (each free lane starts the first step whose ``needs`` are
    finished): of the longest-chain-first order (a step's own ``seconds`` plus the longest chain of the steps that
    read it; 1 s where none is recorded) and :data:`LANE_PLANS` seeded shuffles of it, the one whose
    :func:`simulated_lane_seconds` is shortest, the first on ties. The longest chain first alone leaves a lane idle
    at the end when a short step that nothing reads comes last; a dozen steps are planned in a fraction of a second,
    and the plan is the same on every machine."""
    readers: dict[str, list[str]] = {step.name: [] for step in steps}
    for step in steps:
        for need in step.needs:
            if need in readers:
                readers[need].append(step.name)
    chains: dict[str, float] = {}

    def chain(name: str) -> float:
        if name not in chains:
            chains[name] = max(seconds.get(name, 1.0), 1e-3) + max(
                (chain(reader) for reader in readers[name]), default=0.0
            )
        return chains[name]

    best = sorted(steps, key=lambda step: -chain(step.name))
    best_seconds = simulated_lane_seconds(best, seconds, lanes)
    shuffler = random.Random(0)
    for _ in range(LANE_PLANS):
        order = best.copy()
        shuffler.shuffle(order)
        order_seconds = simulated_lane_seconds(order, seconds, lanes)
        if order_seconds < best_seconds:
            best, best_seconds = order, order_seconds
    return best


def simulated_lane_seconds(order: list[WorldStep], seconds: dict[str, float], lanes: int = 2) -> float:
    """How long ``lanes`` lanes take over ``order`` when step ``s`` lasts ``seconds[s]`` (1 s where none is given),
    scheduled as :func:`build_world` schedules them; needs outside ``order`` count as finished."""
    names = {step.name for step in order}
    finished = {need for step in order for need in step.needs if need not in names}
    waiting, running, clock = list(order), [], 0.0
    while waiting or running:
        for step in _take_ready(waiting, finished, lanes - len(running)):
            heapq.heappush(running, (clock + seconds.get(step.name, 1.0), step.name))
        if not running:
            raise ValueError(f"steps {[step.name for step in waiting]} wait for steps that never finish")
        clock, name = heapq.heappop(running)
        finished.add(name)
    return clock


def recorded_step_seconds() -> dict[str, float]:
    """Each step's seconds in the build of the shipped world (``world.json``): the costs :func:`lane_order` plans with."""
    recorded = json.loads((shipped_world().root / WORLD_FILE).read_text()).get("steps", {})
    return {name: float(entry.get("seconds", 1.0)) for name, entry in recorded.items()}


def _take_ready(waiting: list[WorldStep], finished: set[str], free_lanes: int) -> list[WorldStep]:
    """Up to ``free_lanes`` steps of ``waiting`` whose needs are all ``finished``, in order, taken out of it."""
    ready = [step for step in waiting if set(step.needs) <= finished][: max(free_lanes, 0)]
    for step in ready:
        waiting.remove(step)
    return ready


def _run_in_lanes(steps, lanes, root, settings, progress, begin, finish, log) -> None:
    """Run ``steps`` in ``lanes`` one-thread worker processes, each as soon as its ``needs`` are finished, in the
    order given; a failed step stops the build (the others are killed; a later run resumes them)."""
    finished = {name for name, entry in log["steps"].items() if entry.get("finished")}
    waiting = [step for step in steps if step.name not in finished]
    running: dict[str, tuple[WorldStep, subprocess.Popen]] = {}
    try:
        while waiting or running:
            for step in _take_ready(waiting, finished, lanes - len(running)):
                if begin(step):
                    running[step.name] = (step, _lane_process(step.name, root, settings, progress))
                else:
                    finished.add(step.name)
            if not running and waiting:
                missing = sorted({need for step in waiting for need in step.needs} - finished)
                raise RuntimeError(
                    f"toy world steps {[s.name for s in waiting]} wait for {missing}, which no step makes"
                )
            time.sleep(0.5)
            for name, (step, process) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                if code:
                    raise RuntimeError(
                        f"toy world step {name!r} failed (exit {code}; its output is above); run the build again to "
                        "resume"
                    )
                finish(step)
                finished.add(name)
    finally:
        for _, process in running.values():
            process.kill()
            process.wait()


def _lane_process(name: str, root: Path, settings: WorldSettings, progress: bool) -> subprocess.Popen:
    """A worker process that runs one step with one thread, and dies with this process (Linux)."""
    arguments = json.dumps({"root": str(root), "settings": dataclasses.asdict(settings), "step": name,
                            "progress": progress})  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", f"from iqa_adapter.toy.world import run_lane_step; run_lane_step({arguments!r})"],
        env=environment,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_lane_step(arguments: str) -> None:
    """Entry point of a lane's worker process: run one step of :func:`world_steps` with one thread."""
    import torch

    torch.set_num_threads(1)
    request = json.loads(arguments)
    settings = WorldSettings(**request["settings"])
    steps = {step.name: step for step in world_steps(Path(request["root"]), settings, request["progress"])}
    steps[request["step"]].run()


def make_portable(world: ToyWorld) -> None:
    """Rewrite the world's JSON records without the paths of the machine that built it: the adapters name their
    base model relative to their own folder (``../base``, like the reference adapter's ``learned:../cnniqa``), and
    every other path becomes relative to the folder holding the world (where the recorded commands run)."""
    prefix = f"{world.root.parent}{os.sep}"
    adapters = {world.adapter, world.reference_adapter, *map(world.metric_adapter, CONDITIONING_MODELS)}

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
        if path.name == "config.json" and path.parent in adapters:
            portable["base_model"] = os.path.relpath(world.base, path.parent)
        if path.name == WORLD_FILE:
            portable["paths"] = "relative to the folder that holds this world; the commands run there"
        if portable != data:
            write_json(path, portable)


def _earlier_steps(log_file: Path, recipe: dict) -> dict:
    """The step log of an earlier, resumed build with the same ``recipe`` (world settings and base config; empty
    when there is none)."""
    if not log_file.is_file():
        return {}
    earlier = json.loads(log_file.read_text())
    same = all(
        json.dumps(earlier.get(key), sort_keys=True) == json.dumps(value, sort_keys=True)
        for key, value in recipe.items()
    )
    return earlier.get("steps", {}) if same else {}


def _set_default_scale(adapter_dir: Path, scale: float) -> None:
    """Record in an adapter's config the scale it generates with unless told otherwise."""
    config_file = adapter_dir / "config.json"
    write_json(config_file, {**json.loads(config_file.read_text()), "default_scale": scale})


def _replace(source: Path, target: Path) -> None:
    """Copy a finished model folder into the world (replacing an older one)."""
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    shutil.copytree(source, temporary)
    shutil.rmtree(target, ignore_errors=True)
    temporary.rename(target)
