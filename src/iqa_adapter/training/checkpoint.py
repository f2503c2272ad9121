"""Training checkpoints: everything needed to continue a run exactly, in safetensors and JSON only.

A checkpoint is a folder ``checkpoints/step_NNNNNNNN/`` holding

* ``adapter/``: the adapter as :meth:`IQAAdapter.save_pretrained` writes it (loadable by ``generate``);
* ``training_state.safetensors``: the optimizer's tensors, the EMA weights and the RNG states;
* ``training_state.json``: the step, the optimizer's hyper-parameters, the gradient scaler, the Python and
  NumPy RNG states and the run's counters.

It is written into a hidden temporary folder that is renamed into place once complete, so a killed run
never leaves a half-written checkpoint behind: :func:`latest_checkpoint` only sees complete ones. Nothing is
unpickled when a checkpoint is read.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..adapter import IQAAdapter
from ..io_utils import write_json

CHECKPOINTS_DIR = "checkpoints"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
PREFIX = "step_"


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINTS_DIR / f"{PREFIX}{step:08d}"


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = out_dir / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [
        path
        for path in folder.iterdir()
        if path.is_dir() and path.name.startswith(PREFIX) and (path / STATE_JSON).is_file()
    ]
    return sorted(found, key=lambda path: int(path.name[len(PREFIX) :]))


def latest_checkpoint(out_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1] if checkpoints else None


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``optimizer.<param>.<name>``) and a JSON structure."""
    tensors, scalars = {}, {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in structure["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": structure["param_groups"]}


def _rng_states() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    name, keys, position, has_gauss, cached = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    return tensors, {
        "numpy": [name, keys.tolist(), position, has_gauss, cached],
        "python": [python_version, list(python_state), python_gauss],
    }


def _restore_rng(tensors: dict[str, torch.Tensor], states: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[key] for key in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    python_version, python_state, python_gauss = states["python"]
    random.setstate((python_version, tuple(python_state), python_gauss))


def save_checkpoint(
    out_dir: Path,
    step: int,
    *,
    adapter: IQAAdapter,
    optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor] | None,
    scaler_state: dict | None,
    counters: dict,
) -> Path:
    """Write the checkpoint of ``step`` atomically (temporary folder, then rename); returns its folder."""
    final = checkpoint_dir(out_dir, step)
    temporary = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    adapter.save_pretrained(temporary / "adapter")
    tensors, optimizer_structure = _flatten_optimizer(optimizer.state_dict())
    rng_tensors, rng_states = _rng_states()
    tensors.update(rng_tensors)
    tensors.update({f"ema.{name}": value.detach().cpu().contiguous() for name, value in (ema or {}).items()})
    save_file(tensors, str(temporary / STATE_TENSORS), metadata={"format": "iqa_adapter.training_state"})
    write_json(
        temporary / STATE_JSON,
        {
            "step": step,
            "optimizer": optimizer_structure,
            "rng": rng_states,
            "scaler": scaler_state,
            "has_ema": ema is not None,
            "counters": counters,
        },
    )
    if final.exists():  # a checkpoint of the same step from an earlier attempt: replace it
        shutil.rmtree(final)
    temporary.rename(final)
    return final


def load_checkpoint(
    folder: Path, *, adapter: IQAAdapter, optimizer: torch.optim.Optimizer, ema: dict[str, torch.Tensor] | None
) -> dict:
    """Restore the adapter weights, optimizer, EMA and RNG states; returns the JSON state (step, counters...)."""
    if not (folder / STATE_JSON).is_file():
        raise FileNotFoundError(f"{folder} is not a complete training checkpoint (no {STATE_JSON})")
    state = json.loads((folder / STATE_JSON).read_text())
    tensors = load_file(str(folder / STATE_TENSORS))
    saved = IQAAdapter.from_pretrained(folder / "adapter")
    mine, theirs = adapter.config.to_dict(), saved.config.to_dict()
    mine.pop("extra"), theirs.pop("extra")  # notes such as the recipe (its max_steps may grow on resume)
    if mine != theirs:
        raise ValueError(f"the adapter in {folder} has another configuration than this run's adapter")
    adapter.load_state_dict(saved.state_dict())
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    if state["has_ema"] != (ema is not None):
        raise ValueError(
            f"{folder} was saved {'with' if state['has_ema'] else 'without'} EMA; resume with the same "
            "--ema-decay setting"
        )
    if ema is not None:
        for name, value in ema.items():
            value.copy_(tensors[f"ema.{name}"])
    _restore_rng(tensors, state["rng"])
    return state


def prune_checkpoints(out_dir: Path, keep: int | None) -> None:
    """Delete all but the newest ``keep`` checkpoints (``None`` or 0 keeps all)."""
    if not keep:
        return
    for folder in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(folder)
