"""Training LoDa (and its baselines) with the paper's recipe, resumable after a crash.

Recipe (official defaults in :class:`TrainSettings`): random crops of the model's size, ``crops_per_image``
per image and epoch, after the config's ``resize`` (the official one with a dataset preset, see
:mod:`iqa_adapter.loda.preprocess`), random horizontal and vertical flips; the norm-in-norm PLCC loss;
AdamW (lr 3e-4, weight decay 1e-2) on the trained parameters only; a cosine schedule to 0 stepped every
iteration; batch 128, 10 epochs, seed 3407; incomplete last batches are dropped.

Calibration: once the last epoch is done, a linear map ``mos ~ a * raw + b`` of the raw cosine scores onto
the MOS scale is fitted by least squares on the training rows (raw scores as the registry metric computes
them: ``calibration_crops`` uniform crops per image) and stored in the checkpoint's ``config.json``
(:mod:`iqa_adapter.loda.calibration`); ``calibration_crops=0`` skips it. It does not change the weights, so
it is a run setting: changing it on resume is allowed. Paused runs (``max_iterations``) are not calibrated
until they finish.

Outputs in ``out_dir``: the checkpoint (``config.json`` + ``loda.safetensors``, updated at every save) and
``training_state.safetensors``: the trained weights, AdamW's moments, the scheduler, the RNG state and the
position (epoch, batch) in one file written atomically, at every epoch end and every ``save_every``
iterations. ``resume=True`` continues from it after an interruption (even ``kill -9``): the crops of an
epoch depend only on (seed, epoch, item), so the resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from ..io_utils import atomic_write
from .calibration import CALIBRATION_KEY, calibrate
from .config import LoDaConfig
from .data import IQATable, TrainCrops, epoch_batches
from .losses import norm_in_norm_loss
from .model import LoDa, build_model
from .preprocess import describe_preprocessing

STATE_FILE = "training_state.safetensors"
logger = logging.getLogger("iqa_adapter.loda")


@dataclass
class TrainSettings:
    """Optimisation settings; the defaults are the paper's."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 1e-2
    crops_per_image: int = 3  # paper: LIVE 5, TID2013 10, KADID 3, LIVEC 5, KonIQ 3, SPAQ 3, FLIVE 1
    seed: int = 3407
    # how a run is carried out; free to change when resuming
    save_every: int = 0  # also save the training state every this many iterations (0: at epoch ends only)
    max_iterations: int | None = None  # pause (state saved) after this many iterations in all
    workers: int = 0  # data-loading processes
    device: str = "cpu"
    log_every: int = 50
    calibration_crops: int = 15  # uniform crops per image for the calibration's raw scores (0: no calibration)
    dataset_preset: str | None = None  # the --dataset preset the resize and crops came from, for reports only

    RUN_FIELDS = (
        "save_every",
        "max_iterations",
        "workers",
        "device",
        "log_every",
        "calibration_crops",
        "dataset_preset",
    )

    def recipe(self) -> dict:
        """The fields that define the result (a resumed run must keep them)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUN_FIELDS}


class RunDirectoryError(ValueError):
    """The output directory holds a training run that does not fit this one (or resume was not asked)."""


def _save_state(
    out_dir: Path, model: LoDa, optimizer: torch.optim.Optimizer, scheduler, position: dict, identity: dict
) -> None:
    tensors = {f"model.{name}": t.detach().cpu().contiguous() for name, t in model.trainable_state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    metadata = {
        "identity": json.dumps(identity),
        "position": json.dumps(position),
        "scheduler": json.dumps(scheduler.state_dict()),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
    }
    atomic_write(out_dir / STATE_FILE, lambda path: save_file(tensors, path, metadata=metadata))


def _load_state(out_dir: Path, model: LoDa, optimizer: torch.optim.Optimizer, scheduler, identity: dict) -> dict:
    try:
        with safe_open(out_dir / STATE_FILE, framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    except SafetensorError as error:
        raise RunDirectoryError(
            f"{out_dir / STATE_FILE} cannot be read ({error}): the saved training state is "
            "damaged; delete it to train from the start, or train into a new --out"
        ) from None
    saved = json.loads(metadata["identity"])
    if saved != identity:
        changed = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        raise RunDirectoryError(
            f"{out_dir} holds a run with other {', '.join(changed)}; resume with the same "
            "settings, or train into a new directory"
        )
    model.load_trainable_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    scheduler.load_state_dict(json.loads(metadata["scheduler"]))
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return json.loads(metadata["position"])


def train(
    config: LoDaConfig,
    table: IQATable,
    train_indices: list[int],
    settings: TrainSettings,
    out_dir: str | Path,
    resume: bool = False,
) -> LoDa:
    """Train on the rows ``train_indices`` of ``table``; returns the model (in eval mode) and leaves the
    checkpoint in ``out_dir``. With ``resume``, continues the run saved there, if any."""
    out_dir = Path(out_dir)
    device = torch.device(settings.device)
    model = build_model(config, seed=settings.seed).to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    dataset = TrainCrops(
        table, train_indices, model.crop_size, settings.crops_per_image, settings.seed, resize=config.resize
    )
    batches_per_epoch = len(epoch_batches(len(dataset), settings.batch_size, settings.seed, 0))
    total = batches_per_epoch * settings.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=0.0)
    identity = json.loads(
        json.dumps(
            {
                "config": config.to_dict(),
                "recipe": settings.recipe(),  # as saved: lists
                "dataset": str(table.source),
                "train_indices": list(map(int, train_indices)),
            }
        )
    )
    preprocessing = describe_preprocessing(
        config.resize, model.crop_size, settings.crops_per_image, settings.dataset_preset
    )
    training_info = {
        "training": {
            "recipe": settings.recipe(),
            "dataset": str(table.source),
            "dataset_preset": settings.dataset_preset,
            "preprocessing": preprocessing,
            "train_images": len(train_indices),
            "iterations_total": total,
        }
    }
    logger.info("pre-processing: %s", preprocessing)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)  # dropout
        position = {"epoch": 0, "batch": 0, "iteration": 0}
        if resume and (out_dir / STATE_FILE).is_file():
            position = _load_state(out_dir, model, optimizer, scheduler, identity)
            logger.info(
                "resuming %s at epoch %d, iteration %d of %d",
                out_dir,
                position["epoch"] + 1,
                position["iteration"],
                total,
            )
        elif (out_dir / STATE_FILE).is_file():
            raise RunDirectoryError(
                f"{out_dir} already holds a training run; pass --resume to continue it or choose another --out"
            )

        def save() -> None:
            _save_state(out_dir, model, optimizer, scheduler, position, identity)
            model.save_pretrained(out_dir, extra={"training": {**training_info["training"], **position}})

        model.train()
        started, seen = time.perf_counter(), 0
        while position["epoch"] < settings.epochs:
            dataset.set_epoch(position["epoch"])
            batches = epoch_batches(len(dataset), settings.batch_size, settings.seed, position["epoch"])
            # its own generator: creating a loader must not consume the global RNG that dropout uses
            loader = DataLoader(
                dataset,
                batch_sampler=batches[position["batch"] :],
                num_workers=settings.workers,
                generator=torch.Generator().manual_seed(settings.seed + position["epoch"]),
            )
            for images, labels in loader:
                loss = norm_in_norm_loss(model(images.to(device)), labels.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                position["batch"] += 1
                position["iteration"] += 1
                seen += len(labels)
                if settings.log_every and position["iteration"] % settings.log_every == 0:
                    logger.info(
                        "epoch %d iteration %d/%d loss %.4f lr %.3g (%.1f samples/s)",
                        position["epoch"] + 1,
                        position["iteration"],
                        total,
                        loss.item(),
                        scheduler.get_last_lr()[0],
                        seen / (time.perf_counter() - started),
                    )
                paused = settings.max_iterations is not None and position["iteration"] >= settings.max_iterations
                if paused or (settings.save_every and position["iteration"] % settings.save_every == 0):
                    save()
                if paused:
                    logger.info("paused after %d iterations; continue with --resume", position["iteration"])
                    return model.train(False)
            position["epoch"] += 1
            position["batch"] = 0
            save()
    model.train(False)
    if settings.calibration_crops:
        calibration = calibrate(model, table, train_indices, crops=settings.calibration_crops)
        logger.info(
            "calibration on %d training images: mos ~ %.4g * raw + %.4g (RMSE %.3g, MOS range %.4g to %.4g)",
            calibration.samples,
            calibration.a,
            calibration.b,
            calibration.rmse,
            calibration.mos_min,
            calibration.mos_max,
        )
        model.save_pretrained(
            out_dir,
            extra={"training": {**training_info["training"], **position}, CALIBRATION_KEY: calibration.to_dict()},
        )
    return model
