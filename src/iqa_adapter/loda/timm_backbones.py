"""timm checkpoints of ViTs and ResNets loaded into transformers' ``ViTModel`` / ``ResNetModel``, without timm.

The official LoDa builds its backbones with timm 0.9.2: ``vit_base_patch16_224.augreg2_in21k_ft_in1k`` and
``resnet50``, which that version resolves to ``resnet50.a1_in1k``. Their weights are on the Hugging Face Hub
as ``timm/<model>.<tag>`` repositories holding a plain ``model.safetensors``: a source naming such a repo
(``timm/...``) is downloaded with ``huggingface_hub.hf_hub_download`` (cache and ``HF_HUB_OFFLINE``
honoured) and its tensors renamed into the transformers model, which computes the same functions:

* ViT (timm ``VisionTransformer`` with a class token and ``global_pool="token"``, LayerNorm eps 1e-6):
  ``patch_embed.proj`` -> the patch embedding conv; ``cls_token``, ``pos_embed`` (class position included)
  -> the embeddings; per pre-norm block ``blocks.i.norm1`` / ``norm2`` -> ``layernorm_before`` / ``_after``,
  the fused ``attn.qkv`` -> query, key and value (its rows in thirds, in that order), ``attn.proj`` -> the
  attention output, ``mlp.fc1`` / ``fc2`` -> the GELU MLP; the final ``norm`` -> ``layernorm``, whose CLS
  token LoDa's head reads. Class-token ViTs have no ``fc_norm`` (only average-pooling ones do: refused).
* ResNet (timm ``ResNet``: 7x7/2 conv + BN + ReLU + 3x3/2 max pool stem; blocks with the stride on the 3x3
  conv, "v1.5"; a 1x1 conv + BN projection shortcut where the shape changes; BatchNorm eps 1e-5):
  ``conv1`` / ``bn1`` -> the stem; ``layerS.B.convJ`` / ``bnJ`` -> stage S-1, layer B, conv J-1;
  ``layerS.B.downsample.0`` / ``.1`` -> its shortcut. Bottleneck and basic blocks alike.

The classifiers (``head``, ``fc``) are dropped. Any other difference (a missing or unexpected tensor, a
shape) is a one-line :class:`TimmCheckpointError` naming the checkpoint. timm checkpoints do not record a
ViT's number of heads: :func:`timm_backbone_fields` assumes timm's 64-wide heads (ViT-Ti/S/B/L).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from ..hub import HubDownloadError, download_file, is_local
from ..io_utils import load_safetensors

TIMM_PREFIX = "timm/"
TIMM_WEIGHTS_FILE = "model.safetensors"
TIMM_VIT_LAYER_NORM_EPS = 1e-6
TIMM_HEAD_WIDTH = 64
DROPPED = {"vit": ("head.weight", "head.bias"), "cnn": ("fc.weight", "fc.bias")}
SHOWN_KEYS = 4

# transformers' names inside a ViT layer (transformers 5, then 4) -> (timm name inside a block, which of
# the fused tensor's parts, how many parts)
_VIT_LAYER_PARTS = {
    "layernorm_before": ("norm1", 0, 1),
    "layernorm_after": ("norm2", 0, 1),
    "attention.q_proj": ("attn.qkv", 0, 3),
    "attention.attention.query": ("attn.qkv", 0, 3),
    "attention.k_proj": ("attn.qkv", 1, 3),
    "attention.attention.key": ("attn.qkv", 1, 3),
    "attention.v_proj": ("attn.qkv", 2, 3),
    "attention.attention.value": ("attn.qkv", 2, 3),
    "attention.o_proj": ("attn.proj", 0, 1),
    "attention.output.dense": ("attn.proj", 0, 1),
    "mlp.fc1": ("mlp.fc1", 0, 1),
    "intermediate.dense": ("mlp.fc1", 0, 1),
    "mlp.fc2": ("mlp.fc2", 0, 1),
    "output.dense": ("mlp.fc2", 0, 1),
}
_VIT_OUTSIDE_LAYERS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_RESNET_MODULES = {"convolution": "conv", "normalization": "bn"}

Slot = tuple[str, int, int]  # timm key, part, parts


class TimmCheckpointError(ValueError):
    """A timm checkpoint that cannot be loaded into the LoDa config's backbone; the message says why."""


def is_timm_source(source: str) -> bool:
    """Whether a backbone source names a timm repository on the Hub (``timm/<model>.<tag>``)."""
    return source.startswith(TIMM_PREFIX) and not is_local(source)


def download_timm_checkpoint(source: str) -> Path:
    """The local path of ``model.safetensors`` of the hub repository ``source`` (downloaded once, cached)."""
    try:
        return download_file(source, TIMM_WEIGHTS_FILE, what="the timm backbone")
    except HubDownloadError as error:
        raise TimmCheckpointError(
            f"{error}; timm backbones are named timm/<model>.<tag>, e.g. timm/resnet50.a1_in1k"
        ) from None


def read_timm_checkpoint(source: str) -> dict[str, torch.Tensor]:
    """The tensors of the timm checkpoint ``source`` (a ``timm/...`` hub id)."""
    try:
        return load_safetensors(download_timm_checkpoint(source), f"timm checkpoint {source!r}")
    except FileNotFoundError as error:  # a cache entry whose blob is gone
        raise TimmCheckpointError(f"{error}; delete its Hugging Face cache entry and download it again") from None


def _block_indices(state: dict[str, torch.Tensor], pattern: str) -> list[tuple[int, ...]]:
    return sorted({tuple(int(g) for g in match.groups()) for key in state if (match := re.match(pattern, key))})


def timm_backbone_fields(kind: str, state: dict[str, torch.Tensor], source: str, num_heads: int | None = None) -> dict:
    """The transformers config fields (``VIT_KEYS`` or ``CNN_KEYS``) of a timm ViT (``kind="vit"``) or
    ResNet (``"cnn"``) checkpoint. A ViT's heads are ``num_heads``, or timm's width / 64 when not given."""
    try:
        return _vit_fields(state, source, num_heads) if kind == "vit" else _resnet_fields(state)
    except KeyError as error:
        what = "class-token ViT" if kind == "vit" else "ResNet with a 7x7 stem"
        message = f"timm checkpoint {source!r} is not a timm {what}: it has no tensor {error}"
        raise TimmCheckpointError(message) from None


def _vit_fields(state: dict[str, torch.Tensor], source: str, num_heads: int | None) -> dict:
    width, patch = state["cls_token"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
    patches = state["pos_embed"].shape[1] - 1  # the class token has a position
    side = math.isqrt(patches)
    if side * side != patches:
        raise TimmCheckpointError(
            f"timm checkpoint {source!r} has {patches + 1} positions, not a square grid plus "
            "the class token; LoDa needs a class-token ViT"
        )
    if num_heads is None:
        if width % TIMM_HEAD_WIDTH:
            raise TimmCheckpointError(
                f"cannot tell the heads of timm ViT {source!r} (width {width} is not a multiple "
                f"of timm's {TIMM_HEAD_WIDTH}-wide heads)"
            )
        num_heads = width // TIMM_HEAD_WIDTH
    return {
        "hidden_size": width,
        "num_hidden_layers": len(_block_indices(state, r"blocks\.(\d+)\.")),
        "num_attention_heads": num_heads,
        "intermediate_size": state["blocks.0.mlp.fc1.weight"].shape[0],
        "image_size": side * patch,
        "patch_size": patch,
        "layer_norm_eps": TIMM_VIT_LAYER_NORM_EPS,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "hidden_act": "gelu",
    }


def _resnet_fields(state: dict[str, torch.Tensor]) -> dict:
    blocks = _block_indices(state, r"layer(\d+)\.(\d+)\.")
    stages = sorted({stage for stage, _ in blocks})
    layer_type = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    last_conv = "conv3" if layer_type == "bottleneck" else "conv2"
    return {
        "embedding_size": state["conv1.weight"].shape[0],
        "hidden_sizes": [state[f"layer{stage}.0.{last_conv}.weight"].shape[0] for stage in stages],
        "depths": [sum(1 for s, _ in blocks if s == stage) for stage in stages],
        "layer_type": layer_type,
        "hidden_act": "relu",
        "downsample_in_first_stage": False,
        "downsample_in_bottleneck": False,
    }


def _vit_slot(name: str) -> Slot | None:
    if name in _VIT_OUTSIDE_LAYERS:
        return _VIT_OUTSIDE_LAYERS[name], 0, 1
    match = re.fullmatch(r"(?:layers|encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)", name)
    if match and match.group(2) in _VIT_LAYER_PARTS:
        part, index, parts = _VIT_LAYER_PARTS[match.group(2)]
        return f"blocks.{match.group(1)}.{part}.{match.group(3)}", index, parts
    return None


def _resnet_slot(name: str) -> Slot | None:
    stem = re.fullmatch(r"embedder\.embedder\.(convolution|normalization)\.(.+)", name)
    if stem:
        return f"{_RESNET_MODULES[stem.group(1)]}1.{stem.group(2)}", 0, 1
    match = re.fullmatch(
        r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(?:layer\.(\d+)|shortcut)"
        r"\.(convolution|normalization)\.(.+)",
        name,
    )
    if not match:
        return None
    stage, block, conv, module, tensor = match.groups()
    if conv is None:  # the projection shortcut
        inside = f"downsample.{0 if module == 'convolution' else 1}"
    else:
        inside = f"{_RESNET_MODULES[module]}{int(conv) + 1}"
    return f"layer{int(stage) + 1}.{block}.{inside}.{tensor}", 0, 1


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN_KEYS]) + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def load_timm_state(model: nn.Module, kind: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a timm ViT (``kind="vit"``) or ResNet (``"cnn"``) state dict into the transformers ``model``.

    Every tensor of ``model`` must come from the checkpoint (BatchNorm's ``num_batches_tracked``, which
    some checkpoints leave out, excepted: 0) and every checkpoint tensor but the classifier must be used,
    at the same shape; otherwise :class:`TimmCheckpointError` names the checkpoint and the tensors."""
    slot_of = _vit_slot if kind == "vit" else _resnet_slot
    targets = model.state_dict()
    wanted: dict[str, list[tuple[str, int, int]]] = {}  # timm key -> [(transformers name, part, parts)]
    for name in targets:
        slot = slot_of(name)
        if slot is None:
            raise RuntimeError(
                f"transformers' {type(model).__name__} has a tensor {name!r} that the timm key map "
                "does not know; this transformers version is not supported for timm backbones"
            )
        wanted.setdefault(slot[0], []).append((name, *slot[1:]))
    optional = {key for key in wanted if key.endswith("num_batches_tracked")}
    missing = sorted(set(wanted) - set(state) - optional)
    unexpected = sorted(set(state) - set(wanted) - set(DROPPED[kind]))
    if missing or unexpected:
        found = [f"missing {_shown(missing)}"] * bool(missing) + [f"unexpected {_shown(unexpected)}"] * bool(unexpected)
        raise TimmCheckpointError(
            f"timm checkpoint {source!r} does not fit the LoDa config's {type(model).__name__} "
            f"({'; '.join(found)}); use a config with that backbone's architecture"
        )
    loaded = {}
    for key, slots in wanted.items():
        if key not in state:  # an optional BatchNorm counter
            loaded.update({name: torch.zeros_like(targets[name]) for name, _, _ in slots})
            continue
        first, parts = targets[slots[0][0]], slots[0][2]
        expected = tuple(first.shape) if parts == 1 else (parts * first.shape[0], *first.shape[1:])
        if tuple(state[key].shape) != expected:
            raise TimmCheckpointError(
                f"timm checkpoint {source!r}: {key} has shape {tuple(state[key].shape)}, the "
                f"LoDa config's {type(model).__name__} needs {expected}; use a config with "
                "that backbone's architecture"
            )
        pieces = state[key].chunk(parts) if parts > 1 else (state[key],)
        loaded.update({name: pieces[index] for name, index, _ in slots})
    model.load_state_dict(loaded, strict=True)
