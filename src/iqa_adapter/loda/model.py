"""The LoDa network (Xu et al., CVPR 2024) on transformers backbones, and its checkpoints.

Data flow for a batch of crops (N, 3, S, S) in [0, 1] (S = the ViT's image size, 224 for the paper):

1. both backbones see the crops normalised with the ImageNet mean and std (as in the official data
   transforms, although timm trained the AugReg ViT with mean = std = 0.5);
2. the frozen CNN (transformers ``ResNetModel``) gives four stage maps; a *local distortion extractor* per
   stage, ``Conv1x1(C -> r) -> GELU -> Conv3x3(r -> r, no bias) -> AdaptiveAvgPool(g)``, turns each into
   ``g * g`` tokens of width r; the 4 g^2 *distortion tokens* are computed once and shared by all blocks;
3. before every block i of the frozen ViT (transformers ``ViTModel``), an *injector* adds
   ``s_i * up_i(d + MHCA(d, tokens))`` to the tokens x, where ``d = down_i(x)``, ``down_i`` is the MLP
   D -> r -> r, MHCA the multi-head cross-attention with the ViT tokens as queries and the distortion
   tokens as keys and values, ``up_i`` the MLP r -> D -> D and ``s_i`` a per-channel scale initialised
   near 0 (truncated normal, std 0.02), so training starts from the unchanged ViT;
4. the final LayerNorm's CLS token -> dropout 0.1 -> cosine-similarity linear head: the score is the cosine
   between the CLS feature and a learned vector, in [-1, 1].

The frozen backbones come from the config's sources: ``timm/...`` checkpoints (the official ones, mapped
by :mod:`iqa_adapter.loda.timm_backbones`), transformers models, or seeded random weights.

With ViT-B/16 and ResNet-50 this has 8,927,488 trainable parameters, as the official model. The baselines
of the paper's ablations are ``variant`` values of the same class (see :data:`config.VARIANTS`).

Frozen backbones run in eval mode. In particular the frozen CNN's BatchNorm keeps its pretrained running
statistics by default (``bn_mode="frozen"``): the official code leaves it in train mode, so it normalises
with batch statistics while training and its running statistics drift with the training data; that
behaviour is ``bn_mode="official"``, whose drifted statistics are then saved with the trained parameters.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import ResNetConfig, ResNetModel, ViTConfig, ViTModel

from ..hub import error_first_line
from ..io_utils import atomic_write, load_safetensors, read_json, write_json
from .config import CNN_KEYS, VIT_KEYS, LoDaConfig
from .timm_backbones import is_timm_source, load_timm_state, read_timm_checkpoint, timm_backbone_fields

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "loda.safetensors"
CHECKPOINT_FORMAT = "iqa-adapter/loda"
SCALE_INIT_STD = 0.02
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


class CheckpointError(ValueError):
    """A LoDa checkpoint directory that cannot be loaded; the message says why and what to do."""


# ---------------------------------------------------------------- building blocks


class Mlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CrossAttention(nn.Module):
    """Multi-head attention of ``query`` tokens over ``context`` tokens, both of width ``dim``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"the cross-attention width {dim} must be divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        def heads(x: torch.Tensor) -> torch.Tensor:  # (N, L, dim) -> (N, heads, L, dim / heads)
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        key, value = self.kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(heads(self.q(query)), heads(key), heads(value))
        return self.proj(out.transpose(1, 2).flatten(2))


class Injector(nn.Module):
    """Local distortion injector of one ViT block: returns the term ``s * up(d + MHCA(d, tokens))`` that
    is added to the ViT tokens, ``d = down(x)``. Without cross-attention (the ``add_tokens`` ablation) the
    distortion tokens are added to the patch tokens position by position instead: ``d[:, 1:] + tokens``."""

    def __init__(self, embed_dim: int, latent_dim: int, num_heads: int, cross_attention: bool = True):
        super().__init__()
        self.down = Mlp(embed_dim, latent_dim, latent_dim)
        self.cross_attn = CrossAttention(latent_dim, num_heads) if cross_attention else None
        self.up = Mlp(latent_dim, embed_dim, embed_dim)
        self.scale = nn.Parameter(torch.empty(embed_dim))
        # as the official code: truncated at +-2 in absolute terms (100 std), so in effect N(0, 0.02^2)
        nn.init.trunc_normal_(self.scale, std=SCALE_INIT_STD, a=-2.0, b=2.0)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        down = self.down(x)
        if self.cross_attn is not None:
            down = down + self.cross_attn(down, tokens)
        else:
            down = down + F.pad(tokens, (0, 0, x.shape[1] - tokens.shape[1], 0))  # nothing added to CLS
        return self.up(down) * self.scale


class DistortionExtractor(nn.Module):
    """One ``Conv1x1 -> GELU -> Conv3x3 -> AdaptiveAvgPool`` per CNN stage; returns the stages' tokens
    concatenated, (N, stages * grid^2, latent_dim), each stage in row-major order."""

    def __init__(self, stage_channels: list[int], latent_dim: int, grid_size: int):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, latent_dim, 1),
                nn.GELU(),
                nn.Conv2d(latent_dim, latent_dim, 3, padding=1, bias=False),
                nn.AdaptiveAvgPool2d(grid_size),
            )
            for channels in stage_channels
        )

    def forward(self, stage_maps: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([extract(m).flatten(2).transpose(1, 2) for extract, m in zip(self.stages, stage_maps)], dim=1)


class CosineHead(nn.Module):
    """Cosine similarity between the feature and a learned direction: a score in [-1, 1].

    The direction starts uniform in [-1, 1] and rescaled to unit length, as the official ``NormedLinear``
    (``uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)``): the forward pass normalises it anyway, but its
    length sets how fast AdamW turns it: uniform(-1, 1) alone has length about sqrt(D / 3), 16 for D = 768,
    and would turn about 16 times slower.
    """

    def __init__(self, in_features: int):
        super().__init__()
        weight = torch.empty(in_features, 1).uniform_(-1, 1)
        self.weight = nn.Parameter(weight / weight.norm(dim=0, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)).squeeze(1)


# ---------------------------------------------------------------- backbones


@torch.no_grad()
def seeded_init(model: nn.Module, seed: int) -> None:
    """Deterministic random weights for a backbone from ``seed`` (CPU generator, module order): He-normal
    convolutions, N(0, 0.02) linear layers and embeddings, zero biases, unit norms, BatchNorm statistics
    of a standard normal input. Independent of transformers' own initialisation, so it rebuilds the same
    weights across transformers versions."""
    generator = torch.Generator().manual_seed(seed)
    done: set[int] = set()

    def fill(tensor: torch.Tensor, std: float) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)
        done.add(id(tensor))

    def constant(tensor: torch.Tensor | None, value: float) -> None:
        if tensor is not None:
            tensor.fill_(value)
            done.add(id(tensor))

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            fill(module.weight, math.sqrt(2 / fan_in) if isinstance(module, nn.Conv2d) else 0.02)
            constant(module.bias, 0.0)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            constant(module.weight, 1.0)
            constant(module.bias, 0.0)
            if isinstance(module, nn.BatchNorm2d):
                constant(module.running_mean, 0.0)
                constant(module.running_var, 1.0)
                constant(module.num_batches_tracked, 0)
    for parameter in model.parameters():  # CLS token, position embeddings
        if id(parameter) not in done:
            fill(parameter, 0.02)
    left = [name for name, buffer in model.named_buffers() if id(buffer) not in done]
    if left:
        raise RuntimeError(f"seeded_init does not know how to initialise the buffers {left}")


def _check_backbone_fields(loaded: dict, expected: dict, source: str) -> None:
    def plain(value):  # configs may hold tuples where JSON gives lists
        return list(value) if isinstance(value, tuple) else value

    differences = {key: (loaded.get(key), value) for key, value in expected.items() if plain(loaded.get(key)) != value}
    if differences:
        detail = ", ".join(f"{key}: {got!r} there, {want!r} in the config" for key, (got, want) in differences.items())
        raise CheckpointError(
            f"backbone {source!r} does not match the LoDa config ({detail}); use a config "
            "with that backbone's architecture"
        )


def _unavailable_backbone(source: str, error: OSError) -> CheckpointError:
    """The one-line error for a pretrained backbone (or its config) that cannot be loaded."""
    return CheckpointError(
        f"cannot load the pretrained backbone {source!r} ({error_first_line(error)}); pretrained backbones need "
        "the internet, a filled Hugging Face cache or a local folder; offline, use --preset tiny or "
        "--backbone-init random"
    )


BACKBONES = {"vit": (ViTModel, ViTConfig, VIT_KEYS), "cnn": (ResNetModel, ResNetConfig, CNN_KEYS)}


def pretrained_backbone_fields(kind: str, source: str) -> dict:
    """The architecture fields (``VIT_KEYS`` for ``kind="vit"``, ``CNN_KEYS`` for ``"cnn"``) of a pretrained
    backbone: a timm checkpoint (``timm/...``; a ViT's heads are taken 64 wide, as timm's) or a
    transformers model (hub id or folder)."""
    _, config_class, keys = BACKBONES[kind]
    if is_timm_source(source):
        return timm_backbone_fields(kind, read_timm_checkpoint(source), source)
    try:
        loaded = config_class.from_pretrained(source).to_dict()
    except OSError as error:
        raise _unavailable_backbone(source, error) from None
    return {key: loaded[key] for key in keys}


def _backbone(kind: str, fields: dict, source: str | None, seed: int, meta: bool, **options) -> nn.Module:
    """The frozen backbone ``kind`` (see :data:`BACKBONES`) with the architecture ``fields``: from a timm
    checkpoint, a transformers model or seeded random weights (``source`` None); its structure only on
    the meta device with ``meta``."""
    model_class, config_class, keys = BACKBONES[kind]
    expected = {key: fields[key] for key in keys}
    if source is not None and not meta and not is_timm_source(source):
        try:
            model = model_class.from_pretrained(source, **options)
        except OSError as error:
            raise _unavailable_backbone(source, error) from None
        _check_backbone_fields(model.config.to_dict(), expected, source)
        return model
    with torch.device("meta"):
        model = model_class(config_class(**fields), **options)
    if meta:
        return model
    model = model.to_empty(device="cpu")
    if source is None:
        seeded_init(model, seed)
    else:
        state = read_timm_checkpoint(source)
        _check_backbone_fields(
            timm_backbone_fields(kind, state, source, fields.get("num_attention_heads")), expected, source
        )
        load_timm_state(model, kind, state, source)
    return model


# ---------------------------------------------------------------- the model


class LoDa(nn.Module):
    """LoDa or one of its baselines (``config.variant``); scores (N,) crops (N, 3, S, S) in [0, 1].

    Build it with :func:`build_model` or :meth:`from_pretrained`; score images of other sizes through
    :class:`iqa_adapter.loda.metric.LoDaMetric`, which crops and averages.
    """

    def __init__(self, config: LoDaConfig, vit: ViTModel, cnn: ResNetModel | None):
        super().__init__()
        self.config = config
        self.vit = vit
        self.cnn = cnn if config.uses_cnn else None
        embed_dim = vit.config.hidden_size
        if config.uses_cnn:
            self._check_token_counts()
            self.extractor = DistortionExtractor(list(config.cnn["hidden_sizes"]), config.latent_dim, config.grid_size)
            self.injectors = nn.ModuleList(
                Injector(
                    embed_dim, config.latent_dim, config.cross_attn_heads, cross_attention=config.variant == "loda"
                )
                for _ in range(vit.config.num_hidden_layers)
            )
        else:
            self.extractor, self.injectors = None, None
        self.dropout = nn.Dropout(config.dropout)
        self.head = CosineHead(embed_dim)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        self.vit.requires_grad_(config.variant == "full_finetune")
        if self.cnn is not None:
            self.cnn.requires_grad_(False)
        self.train(False)

    def _check_token_counts(self) -> None:
        patches = (self.config.crop_size // self.config.vit["patch_size"]) ** 2
        tokens = len(self.config.cnn["hidden_sizes"]) * self.config.grid_size**2
        if self.config.variant == "add_tokens" and tokens != patches:
            raise ValueError(
                f"the add_tokens baseline adds distortion token j to patch token j, so it needs as many "
                f"distortion tokens ({tokens}) as patches ({patches}); choose grid_size so that "
                f"stages * grid_size^2 = (crop / patch)^2"
            )

    @property
    def crop_size(self) -> int:
        return self.config.crop_size

    def train(self, mode: bool = True) -> LoDa:
        """Train mode for the trained parts; the frozen backbones stay in eval mode (but the CNN follows
        ``mode`` with ``bn_mode="official"``)."""
        super().train(mode)
        if self.config.variant != "full_finetune":
            self.vit.train(False)
        if self.cnn is not None and self.config.bn_mode == "frozen":
            self.cnn.train(False)
        return self

    # ---------------------------------------------------------------- forward

    def _vit_layers(self) -> nn.ModuleList:
        return self.vit.layers if hasattr(self.vit, "layers") else self.vit.encoder.layer  # transformers 5 / 4

    def distortion_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, stages * grid^2, r) distortion tokens of normalised crops."""
        x = self.cnn.embedder(pixels)
        stage_maps = []
        for stage in self.cnn.encoder.stages:
            x = stage(x)
            stage_maps.append(x)
        return self.extractor(stage_maps)

    def _run(self, images: torch.Tensor, keep_injected: bool) -> dict[str, torch.Tensor]:
        size = self.crop_size
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(
                f"LoDa takes crops of shape (N, 3, {size}, {size}), got {tuple(images.shape)}; score "
                "images of other sizes with LoDaMetric (loda:<checkpoint>), which crops and averages"
            )
        pixels = (images - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        tokens = self.distortion_tokens(pixels) if self.injectors is not None else None
        hidden = self.vit.embeddings(pixels)
        for index, layer in enumerate(self._vit_layers()):
            if self.injectors is not None:
                injected = self.injectors[index](hidden, tokens)
                hidden = hidden + injected
                if keep_injected:
                    out[f"injected.{index}"] = injected
            hidden = layer(hidden)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        out["cls"] = self.vit.layernorm(hidden)[:, 0]
        if tokens is not None:
            out["distortion_tokens"] = tokens
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scores (N,) in [-1, 1] of crops (N, 3, S, S) in [0, 1]."""
        return self.head(self.dropout(self._run(images, keep_injected=False)["cls"]))

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``cls`` (N, D), ``distortion_tokens`` (N, T, r) and ``injected.<i>`` (N, 1 + patches, D), the
        term each injector added before ViT block i (the last two only for variants with a CNN)."""
        return self._run(images, keep_injected=True)

    # ---------------------------------------------------------------- parameters and checkpoints

    def parameter_counts(self) -> dict[str, int]:
        parameters = list(self.parameters())
        return {
            "trainable": sum(p.numel() for p in parameters if p.requires_grad),
            "total": sum(p.numel() for p in parameters),
        }

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint saves: the trained parameters, plus the CNN's BatchNorm statistics when they
        drift (``bn_mode="official"``)."""
        state = {name: p for name, p in self.named_parameters() if p.requires_grad}
        if self.cnn is not None and self.config.bn_mode == "official":
            state.update({f"cnn.{name}": b for name, b in self.cnn.named_buffers() if name.endswith(BN_STATISTICS)})
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.trainable_state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"the weights do not fit this LoDa model (missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}); was the checkpoint made with another variant or bn_mode?"
            )
        with torch.no_grad():
            for name, tensor in expected.items():
                if tensor.shape != state[name].shape:
                    raise CheckpointError(
                        f"{name}: shape {tuple(state[name].shape)} in the file, {tuple(tensor.shape)} in the model"
                    )
                tensor.copy_(state[name])

    def frozen_fingerprint(self) -> str:
        """SHA-256 of the frozen weights (everything a checkpoint does not save), to check a rebuild."""
        saved = set(self.trainable_state_dict())
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            if name not in saved:
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> None:
        """Write ``config.json`` and ``loda.safetensors`` (trained parts only), each atomically."""
        directory = Path(directory)
        state = {name: t.detach().cpu().contiguous() for name, t in self.trainable_state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda path: save_file(state, path))
        write_json(
            directory / CONFIG_FILE,
            {
                "format": CHECKPOINT_FORMAT,
                "version": 1,
                "config": self.config.to_dict(),
                "frozen_fingerprint": self.frozen_fingerprint(),
                "parameters": self.parameter_counts(),
                **(extra or {}),
            },
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device | None = None, verify: bool = True
    ) -> LoDa:
        """Load a checkpoint directory; ``verify`` checks that the frozen backbones rebuilt bit-exactly."""
        directory = Path(directory)
        meta = read_checkpoint_config(directory)
        model = build_model(LoDaConfig.from_dict(meta["config"]))
        model.load_trainable_state_dict(load_safetensors(directory / WEIGHTS_FILE, "LoDa weights"))
        if verify and model.frozen_fingerprint() != meta["frozen_fingerprint"]:
            raise CheckpointError(
                f"the frozen backbones rebuilt for {directory} differ from those it was trained with (fingerprint "
                "mismatch): another revision of a pretrained backbone, or another initialisation; pass "
                "verify=False to use them anyway"
            )
        return model.to(device) if device is not None else model


def read_checkpoint_config(directory: str | Path) -> dict:
    """The parsed ``config.json`` of a LoDa checkpoint directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory} is not a LoDa checkpoint: the folder does not exist (give the --out "
            "folder of `iqa-adapter loda train`)"
        )
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(
                f"{directory} is not a LoDa checkpoint: {name} is missing (train one with `iqa-adapter loda train`)"
            )
    meta = read_json(directory / CONFIG_FILE, "LoDa checkpoint config")
    found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    if found != CHECKPOINT_FORMAT or "config" not in meta:
        raise CheckpointError(
            f"{directory / CONFIG_FILE} is not a LoDa checkpoint config (format {found!r}, expected "
            f"{CHECKPOINT_FORMAT!r})"
        )
    return meta


def build_model(config: LoDaConfig, seed: int = 0, device: str | torch.device | None = None) -> LoDa:
    """A LoDa model: frozen backbones from the config (pretrained or seeded), trainable parts initialised
    from ``seed``. ``device="meta"`` builds the structure only (no weights, no download), for counting."""
    meta = str(device) == "meta"
    vit = _backbone("vit", config.vit, config.vit_source, config.backbone_seed, meta, add_pooling_layer=False)
    cnn = _backbone("cnn", config.cnn, config.cnn_source, config.backbone_seed + 1, meta) if config.uses_cnn else None
    if meta:
        with torch.device("meta"):
            return LoDa(config, vit, cnn)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LoDa(config, vit, cnn)
    return model.to(device) if device is not None else model
