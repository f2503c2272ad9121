"""The toy world's IQA models: a tiny LoDa, NIQE fitted on clean toy scenes, and the classical metrics.

Everything is rebuilt offline from the toy scenes (:mod:`iqa_adapter.toy.scenes`, 32 px) on a CPU, within a
few minutes (the whole toy world has to rebuild in under an hour on 2 cores):

1. :func:`make_toy_iqa_dataset`: clean scenes x the KADID-like distortion families of
   :mod:`iqa_adapter.distortions` x levels ``k / levels``, each distorted image labelled with a
   full-reference pseudo-MOS (100 x SSIM against its clean scene; the clean scene itself is a row with
   MOS 100), in the meta-CSV convention of :mod:`iqa_adapter.loda.data`, through
   :func:`iqa_adapter.loda.synthetic.make_dataset`. The scenes come from :data:`IQA_DATA_SEED`, a seed
   stream disjoint from the base model's training data (seed 0) and from the base-model evaluations
   (:data:`iqa_adapter.toy.evaluation.EVALUATION_SEED`).
2. :func:`train_toy_loda`: the ``tiny`` LoDa preset (32 px crops: a crop is the whole toy image) trained
   by the project's own LoDa code (:func:`iqa_adapter.loda.train.train`) on the training references of a
   split by reference image, then calibrated to the pseudo-MOS scale (:mod:`iqa_adapter.loda.calibration`)
   and tested on the held-out references (SRCC, PLCC after the logistic fit, KRCC, RMSE). Use the result as
   ``create_metric("loda:<dir>")``.
3. :func:`fit_toy_niqe`: NIQE's pristine model fitted on clean scenes of :data:`NIQE_SEED` with
   :data:`NIQE_PATCH_SIZE` px patches (the standard 96 px do not fit in a 32 px image); use it as
   ``create_metric("niqe", params=<file>)``.

:func:`evaluate_toy_iqa` measures any registry metrics on the held-out references of the dataset, oriented
so that a positive correlation agrees with quality.

Every output is written atomically: the dataset's ``meta.csv`` and manifest come last; the LoDa run trains
in ``<out>.partial`` (resumable after a kill) and is renamed to ``<out>`` when done; the NIQE file and its
report are each written to a temporary file and renamed. Calling a function again with the same settings on
a finished output returns it without redoing the work; other settings on a finished output are refused.
The tiny networks run much faster on one thread than on two busy cores, so the functions use one torch
thread unless told otherwise (``threads``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..distortions import FAMILIES
from ..io_utils import write_json
from ..loda.calibration import raw_table_scores, read_calibration
from ..loda.config import loda_preset
from ..loda.data import IQATable, load_image, random_splits, read_meta
from ..loda.evaluate import correlation_metrics
from ..loda.model import read_checkpoint_config
from ..loda.synthetic import CLEAN_FAMILY, make_dataset
from ..loda.train import STATE_FILE, TrainSettings, train
from ..metrics.niqe import fit_niqe, save_niqe_params
from .scenes import render_scenes, scene_for

IQA_DATA_SEED = 2000  # scenes of the IQA dataset (base model data: seed 0; base-model evaluations: 1000)
NIQE_SEED = 3000  # clean scenes NIQE is fitted on
TOY_SIZE = 32
NIQE_PATCH_SIZE = 8

# Full settings of the shipped toy IQA models (see the functions' defaults and the README's toy section).
DATASET_REFERENCES = 1000
DATASET_LEVELS = 5
LODA_EPOCHS = 7
LODA_BATCH_SIZE = 64
LODA_LR = 5e-3
NIQE_IMAGES = 2000

DATASET_MANIFEST = "toy_iqa_dataset.json"
LODA_REPORT = "toy_loda.json"
CLASSICAL_METRICS = ("piqe", "sharpness", "noise", "blockiness", "colorfulness", "contrast")
logger = logging.getLogger("iqa_adapter.toy")


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run torch with ``threads`` threads (None: leave the setting alone)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _progress_logging(enabled: bool) -> Iterator[None]:
    """Show the LoDa training log (logger ``iqa_adapter.loda``) on stderr while ``enabled``."""
    loda_logger = logging.getLogger("iqa_adapter.loda")
    if not enabled or loda_logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("loda: %(message)s"))
    level = loda_logger.level
    loda_logger.addHandler(handler)
    loda_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        loda_logger.removeHandler(handler)
        loda_logger.setLevel(level)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


def render_clean_scenes(count: int, seed: int, size: int = TOY_SIZE, start: int = 0) -> torch.Tensor:
    """Scenes ``start .. start + count - 1`` of the toy world with ``seed``, rendered: (count, 3, size, size)
    float in [0, 1] (exactly the 8-bit rendering)."""
    return render_scenes((scene_for(seed, index) for index in range(start, start + count)), size)


# ---------------------------------------------------------------- dataset


def make_toy_iqa_dataset(
    out_dir: str | Path,
    num_references: int = DATASET_REFERENCES,
    size: int = TOY_SIZE,
    seed: int = IQA_DATA_SEED,
    families: Sequence[str] = FAMILIES,
    levels: int = DATASET_LEVELS,
    measure: str = "ssim",
    progress: bool = True,
    threads: int | None = 1,
) -> Path:
    """Write the toy IQA dataset to ``out_dir`` and return the path of its ``meta.csv``.

    ``num_references`` clean scenes (``scene_for(seed, i)``, rendered at ``size`` px) x ``families`` x
    ``levels`` distorted images, plus each clean scene: ``num_references * (len(families) * levels + 1)``
    rows of ``img_name, ref_name, family, level, mos`` (``family`` = ``clean`` for the clean scenes,
    ``mos`` = 100 x ``measure`` against the clean scene). A manifest ``toy_iqa_dataset.json`` with the
    settings is written last; calling again with the same settings returns at once.
    """
    out_dir = Path(out_dir)
    parameters = dict(
        num_references=num_references, size=size, seed=seed, families=list(families), levels=levels, measure=measure
    )
    manifest = out_dir / DATASET_MANIFEST
    if manifest.is_file():
        found = json.loads(manifest.read_text())["parameters"]
        if found == parameters:
            return out_dir / "meta.csv"
        raise ValueError(
            f"{out_dir} already holds a toy IQA dataset made with other settings ({found}); give "
            "another directory or delete it"
        )
    if num_references < 2:
        raise ValueError(
            f"a toy IQA dataset needs at least 2 reference scenes (one per side of a split), got {num_references}"
        )
    started = time.perf_counter()
    with _torch_threads(threads):
        clean = render_clean_scenes(num_references, seed, size)
        meta = make_dataset(
            out_dir,
            families=families,
            levels=levels,
            seed=seed,
            measure=measure,
            images=clean,
            include_clean=True,
            progress=progress,
        )
    frame = pd.read_csv(meta)
    seconds = round(time.perf_counter() - started, 1)
    write_json(
        manifest,
        dict(
            parameters=parameters,
            images=len(frame),
            seconds=seconds,
            mos={
                "min": float(frame["mos"].min()),
                "max": float(frame["mos"].max()),
                "mean": float(frame["mos"].mean()),
            },
        ),
    )
    _say(progress, f"toy IQA dataset: {len(frame)} images of {num_references} scenes in {out_dir} ({seconds} s)")
    return meta


def toy_split(table: IQATable, split_seed: int = 0, train_fraction: float = 0.8) -> dict[str, list[int]]:
    """The split by reference scene that :func:`train_toy_loda` trains and tests on (rows of ``table``)."""
    if table.refs is None:
        raise ValueError(f"{table.source} has no reference column; make it with make_toy_iqa_dataset")
    return random_splits(len(table), table.refs, num_splits=1, train_fraction=train_fraction, seed=split_seed)[0]


def _read_dataset(data_dir: str | Path) -> IQATable:
    meta = Path(data_dir) / "meta.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} does not exist: make the dataset with make_toy_iqa_dataset first")
    return read_meta(meta)


# ---------------------------------------------------------------- LoDa


def train_toy_loda(
    out_dir: str | Path,
    data_dir: str | Path,
    epochs: int = LODA_EPOCHS,
    batch_size: int = LODA_BATCH_SIZE,
    lr: float = LODA_LR,
    weight_decay: float = 1e-2,
    crops_per_image: int = 1,
    seed: int = 3407,
    split_seed: int = 0,
    train_fraction: float = 0.8,
    progress: bool = True,
    threads: int | None = 1,
    device: str = "cpu",
) -> dict:
    """Train the toy LoDa on the dataset in ``data_dir``; the checkpoint goes to ``out_dir``. Returns (and
    writes to ``out_dir/toy_loda.json``) the held-out metrics and the run's details.

    The ``tiny`` preset (random seeded backbones, 32 px crops: the whole toy image, so ``crops_per_image``
    is 1 and flips are the only augmentation) is trained with :func:`iqa_adapter.loda.train.train` (AdamW,
    cosine schedule, norm-in-norm loss) on the training references of :func:`toy_split` (``split_seed``,
    ``train_fraction``), calibrated on them, and tested on the held-out references: SRCC, PLCC (after the
    logistic fit), KRCC and RMSE of the raw scores, and the RMSE of the calibrated scores against the
    pseudo-MOS (no fit). The run lives in ``<out_dir>.partial`` until it is finished (call again to resume
    it after a kill), then the directory is renamed to ``out_dir``; a finished ``out_dir`` trained with the
    same settings is returned as it is, other settings are refused.
    """
    out_dir = Path(out_dir)
    table = _read_dataset(data_dir)
    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        crops_per_image=crops_per_image,
        seed=seed,
        device=device,
        log_every=0,
    )
    manifest = Path(data_dir) / DATASET_MANIFEST  # the dataset by its settings, so that it may move
    dataset = json.loads(manifest.read_text())["parameters"] if manifest.is_file() else str(Path(data_dir).resolve())
    parameters = dict(
        dataset=dataset,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        crops_per_image=crops_per_image,
        seed=seed,
        split_seed=split_seed,
        train_fraction=train_fraction,
        preset="tiny",
    )
    if (out_dir / LODA_REPORT).is_file():
        report = json.loads((out_dir / LODA_REPORT).read_text())
        if report["parameters"] == parameters:
            return report
        raise ValueError(
            f"{out_dir} already holds a toy LoDa trained with other settings ({report['parameters']}); "
            "give another directory or delete it"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} exists and is not a finished toy LoDa; give another directory or delete it")
    split = toy_split(table, split_seed, train_fraction)
    partial = out_dir.with_name(out_dir.name + ".partial")
    iterations = epochs * (len(split["train"]) * crops_per_image // batch_size)
    settings.log_every = max(1, iterations // 20) if progress else 0
    scenes = len({table.refs[i] for i in split["train"]})
    _say(
        progress,
        f"toy LoDa: training on {len(split['train'])} images ({scenes} scenes), {epochs} epochs x "
        f"batch {batch_size} = {iterations} iterations, in {partial}",
    )
    started = time.perf_counter()
    with _torch_threads(threads), _progress_logging(progress):
        model = train(loda_preset("tiny"), table, split["train"], settings, partial, resume=True)
        trained_seconds = time.perf_counter() - started
        raw = raw_table_scores(model, table, split["test"])
    mos = table.mos[split["test"]]
    calibration = read_calibration(read_checkpoint_config(partial))
    metrics = correlation_metrics(raw, mos)
    calibrated = calibration.apply(raw) if calibration is not None else raw
    report = dict(
        parameters=parameters,
        test=dict(
            metrics,
            calibrated_rmse=float(np.sqrt(np.mean((calibrated - mos) ** 2))),
            images=len(split["test"]),
            scenes=len({table.refs[i] for i in split["test"]}),
        ),
        data=str(Path(data_dir).resolve()),
        train_images=len(split["train"]),
        iterations=iterations,
        seconds=round(time.perf_counter() - started, 1),
        training_seconds=round(trained_seconds, 1),
        calibration=calibration.to_dict() if calibration else None,
    )
    write_json(partial / LODA_REPORT, report)
    (partial / STATE_FILE).unlink(missing_ok=True)  # finished: the optimizer state is not needed any more
    if out_dir.exists():
        out_dir.rmdir()  # only an empty directory is replaced (checked before training)
    partial.rename(out_dir)
    test = report["test"]
    _say(
        progress,
        f"toy LoDa in {out_dir}: held-out SRCC {test['srcc']:.4f} PLCC {test['plcc']:.4f} KRCC "
        f"{test['krcc']:.4f} on {test['images']} images ({report['seconds']} s)",
    )
    return report


# ---------------------------------------------------------------- NIQE


def fit_toy_niqe(
    out_file: str | Path,
    num_images: int = NIQE_IMAGES,
    seed: int = NIQE_SEED,
    size: int = TOY_SIZE,
    patch_size: int = NIQE_PATCH_SIZE,
    sharpness_threshold: float = 0.75,
    check_data: str | Path | None = None,
    split_seed: int = 0,
    train_fraction: float = 0.8,
    progress: bool = True,
    threads: int | None = 1,
) -> dict:
    """Fit NIQE's pristine model on ``num_images`` clean toy scenes (``scene_for(seed, i)`` at ``size`` px)
    with ``patch_size`` px patches and write it to ``out_file`` (safetensors; use it with
    ``create_metric("niqe", params=out_file)``). Returns the fit's report, also written beside it as
    ``<out_file stem>.json``.

    With ``check_data`` (a toy IQA dataset), the report also holds NIQE's agreement with the pseudo-MOS on
    the held-out references of :func:`toy_split` (see :func:`evaluate_toy_iqa`), and how often a distorted
    image scores worse than its clean scene. Calling again with the same settings returns the report.
    """
    out_file, report_file = Path(out_file), Path(out_file).with_suffix(".json")
    parameters = dict(
        num_images=num_images, seed=seed, size=size, patch_size=patch_size, sharpness_threshold=sharpness_threshold
    )
    if out_file.is_file() and report_file.is_file():
        report = json.loads(report_file.read_text())
        if report["parameters"] == parameters and (check_data is None or "check" in report):
            return report
        if report["parameters"] != parameters:
            raise ValueError(
                f"{out_file} holds a NIQE model fitted with other settings ({report['parameters']}); "
                "give another file or delete it"
            )
    started = time.perf_counter()
    with _torch_threads(threads):
        images = render_clean_scenes(num_images, seed, size)
        batches = tqdm(images.split(64), desc="NIQE fit", unit="batch", disable=not progress)
        mu, cov = fit_niqe(batches, patch_size=patch_size, sharpness_threshold=sharpness_threshold)
    save_niqe_params(
        out_file,
        mu,
        cov,
        patch_size,
        sharpness_threshold=sharpness_threshold,
        images=num_images,
        seed=seed,
        size=size,
        source="iqa_adapter.toy.iqa_models.fit_toy_niqe",
    )
    report = dict(parameters=parameters, seconds=round(time.perf_counter() - started, 1))
    if check_data is not None:
        with _torch_threads(threads):
            report["check"] = evaluate_toy_iqa(
                check_data,
                {"niqe": {"params": str(out_file)}},
                split_seed=split_seed,
                train_fraction=train_fraction,
                progress=False,
            )["niqe"]
        report["seconds"] = round(time.perf_counter() - started, 1)
    write_json(report_file, report)
    check = report.get("check")
    _say(
        progress,
        f"toy NIQE ({patch_size} px patches, {num_images} clean scenes) in {out_file} "
        f"({report['seconds']} s)"
        + (
            f": held-out SRCC {check['srcc']:.4f}, distorted worse than clean in {check['clean_wins']:.1%} of pairs"
            if check
            else ""
        ),
    )
    return report


# ---------------------------------------------------------------- evaluation


def _scores(metric, table: IQATable, rows: list[int], batch_size: int = 256) -> np.ndarray:
    images = torch.stack([load_image(table.paths[row]) for row in rows])
    return torch.cat([metric.score(chunk) for chunk in images.split(batch_size)]).double().cpu().numpy()


def evaluate_toy_iqa(
    data_dir: str | Path,
    metrics: Sequence[str] | dict[str, dict],
    split_seed: int = 0,
    train_fraction: float = 0.8,
    part: str = "test",
    progress: bool = True,
    threads: int | None = 1,
) -> dict[str, dict]:
    """Agreement of registry metrics with the pseudo-MOS on one part (default: the held-out references) of
    the split :func:`toy_split` gives.

    ``metrics``: registry names, or names mapped to their options (``{"niqe": {"params": FILE}}``).
    Scores are oriented so that higher is better (lower-is-better metrics are negated), then: ``srcc``,
    ``plcc`` (after the 4-parameter logistic, which may fit a falling curve: not signed), ``krcc``, ``rmse``
    (of that fit), ``pearson`` (linear, no fit: signed) over the images with a finite score; ``clean_wins``:
    the fraction of (clean scene, one of its distorted images) pairs where the clean scene scores better
    (ties count half); ``nan``: images without a finite score.
    """
    from ..metrics import create_metric, metric_info

    table = _read_dataset(data_dir)
    rows = toy_split(table, split_seed, train_fraction)[part]
    options = dict(metrics) if isinstance(metrics, dict) else {name: {} for name in metrics}
    families = table.frame["family"].to_numpy()[rows] if "family" in table.frame.columns else None
    results = {}
    with _torch_threads(threads):
        for name, kwargs in tqdm(options.items(), desc="toy IQA metrics", unit="metric", disable=not progress):
            info = metric_info(name)
            scores = _scores(create_metric(name, **kwargs), table, rows)
            oriented = scores if info.higher_is_better else -scores
            finite = np.isfinite(oriented)
            result = correlation_metrics(oriented[finite], table.mos[rows][finite])
            result["pearson"] = (
                float(np.corrcoef(oriented[finite], table.mos[rows][finite])[0, 1])
                if finite.sum() > 1 and np.ptp(oriented[finite]) > 0
                else float("nan")
            )
            result.update(images=int(finite.sum()), nan=int((~finite).sum()))
            if families is not None:
                result["clean_wins"] = _clean_wins(oriented, [table.refs[row] for row in rows], families)
            results[name] = result
    return results


def _clean_wins(oriented: np.ndarray, refs: list[str], families: np.ndarray) -> float:
    """Fraction of (clean, distorted of the same scene) pairs ranked correctly by the oriented scores."""
    wins, pairs = 0.0, 0
    clean = {ref: oriented[i] for i, ref in enumerate(refs) if families[i] == CLEAN_FAMILY}
    for i, ref in enumerate(refs):
        if families[i] == CLEAN_FAMILY or ref not in clean:
            continue
        a, b = clean[ref], oriented[i]
        if not (np.isfinite(a) and np.isfinite(b)):
            continue
        wins += 1.0 if a > b else 0.5 if a == b else 0.0
        pairs += 1
    return wins / pairs if pairs else float("nan")
