"""Import checkpoints of the official IQA-Adapter code into this library's format.

Formats read (REFERENCE.md):

* inference checkpoints: a torch file ``{"image_proj": {...}, "ip_adapter": {...}}`` or a safetensors file
  with ``image_proj.`` / ``ip_adapter.`` key prefixes;
* the training wrapper's state (``pytorch_model.bin`` or accelerate's ``model.safetensors``) with prefixes
  ``qual_proj_model.`` / ``adapter_modules.`` (and ``unet.``, which is ignored).

``ip_adapter`` / ``adapter_modules`` keys number *all* attention processors of the UNet in
``unet.attn_processors`` order, self-attention included (``1.to_k_ip.weight``, ``3.to_k_ip.weight``, ...).
The projection type, token count, flag feature and sinusoidal encoding are inferred from the tensor shapes.
Torch pickle files are read only with ``trust_pickle=True`` (and then with ``weights_only=True``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from .adapter import AdapterMismatchError, IQAAdapter, cross_attention_layers, describe_width
from .config import IQAAdapterConfig
from .stats import MetricStats

_KV_KEY = re.compile(r"^(\d+)\.to_([kv])_ip(?:\.0)?\.weight$")
_PREFIXES = (("image_proj.", "ip_adapter."), ("qual_proj_model.", "adapter_modules."))


def read_official_checkpoint(path: str | Path, trust_pickle: bool = False) -> tuple[dict, dict]:
    """The projection state and ``{processor id: {"k": W, "v": W}}`` of an official checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        flat = load_file(path)
    else:
        if not trust_pickle:
            raise ValueError(
                f"{path} is a torch pickle file, which can run code when loaded; pass --trust-pickle "
                "(trust_pickle=True) if it comes from a source you trust, or convert it to safetensors"
            )
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if "image_proj" in loaded and "ip_adapter" in loaded:
            flat = {f"image_proj.{k}": v for k, v in loaded["image_proj"].items()}
            flat.update({f"ip_adapter.{k}": v for k, v in loaded["ip_adapter"].items()})
        else:
            flat = loaded
    for projection_prefix, layers_prefix in _PREFIXES:
        if any(key.startswith(projection_prefix) for key in flat):
            break
    else:
        raise ValueError(
            f"{path} is not an official IQA-Adapter checkpoint: no keys start with 'image_proj.' or "
            f"'qual_proj_model.' (first keys: {sorted(flat)[:5]})"
        )
    projection = {k[len(projection_prefix):]: v for k, v in flat.items() if k.startswith(projection_prefix)}
    kv: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        if key.startswith(layers_prefix):
            match = _KV_KEY.match(key[len(layers_prefix):])
            if match is None:
                raise ValueError(f"{path}: unexpected adapter key {key!r}")
            kv.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return projection, kv


def _infer_features(in_features: int, num_metrics: int) -> tuple[bool, int]:
    """(flag_feature, encoding_frequencies) such that (D + flag) * (2L + 1) == in_features.

    Unambiguous: of D and D + 1 one is even, and an odd multiple of an even number is even while an odd
    multiple of an odd number is odd.
    """
    for flag in (False, True):
        inputs = num_metrics + int(flag)
        if in_features % inputs == 0 and (in_features // inputs - 1) % 2 == 0:
            return flag, (in_features // inputs - 1) // 2
    raise ValueError(
        f"the checkpoint's projection takes {in_features} features, which no layout of {num_metrics} metric(s) "
        "(with or without the flag feature and sinusoidal encoding) gives: check --metrics"
    )


def convert_official(
    path: str | Path,
    unet,
    metrics: Sequence[MetricStats],
    *,
    trust_pickle: bool = False,
    base_model: str | None = None,
    default_scale: float = 0.5,
) -> IQAAdapter:
    """An :class:`IQAAdapter` holding the weights of an official checkpoint for this UNet architecture.

    ``unet`` only provides the layer structure (a UNet built on the ``meta`` device is enough);
    ``metrics`` are the metrics the checkpoint was trained on, in its feature order.
    """
    projection, kv = read_official_checkpoint(path, trust_pickle)
    mlp = "proj.0.weight" in projection
    first, last = ("proj.0.weight", "proj.2.weight") if mlp else ("proj.weight", "proj.weight")
    if first not in projection or "norm.weight" not in projection:
        raise ValueError(f"{path}: projection keys {sorted(projection)} match neither the linear nor the MLP model")
    width = projection["norm.weight"].shape[0]
    unet_width = int(unet.config.cross_attention_dim)
    if width != unet_width:
        raise AdapterMismatchError(
            f"checkpoint {path} has cross-attention width {describe_width(width)}, the base UNet has "
            f"{describe_width(unet_width)}: use the base model the checkpoint was trained for"
        )
    flag, frequencies = _infer_features(projection[first].shape[1], len(metrics))
    layers = cross_attention_layers(unet)
    processor_ids = {name.removesuffix(".processor"): index for index, name in enumerate(unet.attn_processors)}
    expected_ids = [processor_ids[layer.name] for layer in layers]
    if sorted(kv) != expected_ids:
        raise AdapterMismatchError(
            f"checkpoint {path} has K/V for {len(kv)} processors (ids {sorted(kv)[:4]}...), the base UNet has "
            f"{len(layers)} cross-attention layers (ids {expected_ids[:4]}...): wrong base model?"
        )
    config = IQAAdapterConfig(
        cross_attention_dim=unet_width,
        layers=layers,
        metrics=list(metrics),
        num_tokens=projection[last].shape[0] // width,
        projection="mlp" if mlp else "linear",
        mlp_hidden_dim=projection[first].shape[0] if mlp else 128,
        encoding_frequencies=frequencies,
        flag_feature=flag,
        default_scale=default_scale,
        base_model=base_model,
        extra={"converted_from": str(path)},
    )
    with torch.device("cpu"):
        adapter = IQAAdapter(config)
    state = {f"projection.{key}": value for key, value in projection.items()}
    for index, layer_id in enumerate(expected_ids):
        state[f"kv.{index}.to_k.weight"] = kv[layer_id]["k"]
        state[f"kv.{index}.to_v.weight"] = kv[layer_id]["v"]
    adapter.load_state_dict(state, strict=True)
    return adapter
