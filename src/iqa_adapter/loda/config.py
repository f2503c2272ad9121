"""What a LoDa model is: backbones, adapter sizes, variant, and where the frozen weights come from.

A :class:`LoDaConfig` is saved as ``config.json`` in every checkpoint directory, beside ``loda.safetensors``
(the trained parts only). The frozen backbones are rebuilt from the config:

* ``vit_source`` / ``cnn_source`` naming a timm repository on the Hub (``timm/<model>.<tag>``, the official
  backbones): its ``model.safetensors`` is mapped into the transformers model
  (:mod:`iqa_adapter.loda.timm_backbones`, no timm needed);
* another source (a transformers hub id such as ``google/vit-base-patch16-224-in21k``, or a local
  directory): the pretrained weights are loaded with transformers' ``from_pretrained``;
* a source of ``None``: the backbone gets random weights drawn from ``backbone_seed`` by this package's own
  initialisation (:func:`iqa_adapter.loda.model.seeded_init`), so a tiny or random model is rebuilt
  identically anywhere, offline. The checkpoint also records a SHA-256 fingerprint of the frozen weights
  and loading checks it, so a backbone that does not rebuild bit-exactly (another revision of a hub model,
  another initialisation) is reported instead of silently giving other scores.

``resize`` is the pre-processing of every image the model scores, before the crops (training, testing,
calibration and the ``loda:<dir>`` metric alike; :mod:`iqa_adapter.loda.preprocess`); None keeps the native
size.

Presets: ``base`` is the paper's model with the official backbones, timm's
``vit_base_patch16_224.augreg2_in21k_ft_in1k`` (AugReg ViT-B/16, ImageNet-21k then fine-tuned on 1k) and
``resnet50.a1_in1k`` (stages 1-4), r = 64, 4 heads, 7x7 pooling, dropout 0.1; ``tiny`` is a
few-thousand-parameter configuration on 32 px crops for tests and offline toys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..io_utils import reject_unknown_fields
from .preprocess import Resize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VARIANTS = {
    "loda": "LoDa: frozen ViT + frozen CNN, local distortion extractors and cross-attention injectors",
    "linear_probe": "ViT (linear probe): frozen ViT, only the cosine head on the CLS token is trained (Table 6)",
    "full_finetune": "ViT (full fine-tune): the whole ViT and the head are trained, no CNN (Tables 6 and 7)",
    "add_tokens": "ViT + Extractor: distortion tokens added to the down-projected ViT tokens instead of the "
    "injector's cross-attention (Table 7)",
}
BN_MODES = {
    "frozen": "the frozen CNN always runs in eval mode: its BatchNorm uses the pretrained running statistics",
    "official": "as the official code: the CNN follows model.train(), so BatchNorm normalises with batch "
    "statistics in training and its running statistics drift (they are saved in the checkpoint)",
}
# The architecture fields of the transformers configs that a checkpoint records and checks.
VIT_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "image_size",
    "patch_size",
    "layer_norm_eps",
    "qkv_bias",
    "hidden_act",
)
CNN_KEYS = (
    "embedding_size",
    "hidden_sizes",
    "depths",
    "layer_type",
    "hidden_act",
    "downsample_in_first_stage",
    "downsample_in_bottleneck",
)

VIT_B16 = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "image_size": 224,
    "patch_size": 16,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
    "hidden_act": "gelu",
}
RESNET_50 = {
    "embedding_size": 64,
    "hidden_sizes": [256, 512, 1024, 2048],
    "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck",
    "hidden_act": "relu",
    "downsample_in_first_stage": False,
    "downsample_in_bottleneck": False,
}
# the official backbones (timm 0.9.2 resolves "resnet50" to resnet50.a1_in1k)
BASE_SOURCES = ("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "timm/resnet50.a1_in1k")


@dataclass
class LoDaConfig:
    """Architecture of a LoDa model (or of one of its baselines, see ``variant``)."""

    vit: dict  # transformers ViTConfig fields (VIT_KEYS); image_size is the crop size
    cnn: dict  # transformers ResNetConfig fields (CNN_KEYS); stages 1-4 feed the extractors
    vit_source: str | None = None  # timm/<name>, from_pretrained id or directory; None: random from backbone_seed
    cnn_source: str | None = None
    backbone_seed: int = 0
    latent_dim: int = 64  # r: width of the distortion tokens and of the injectors' cross-attention
    grid_size: int = 7  # each CNN stage is pooled to grid_size x grid_size distortion tokens
    cross_attn_heads: int = 4
    dropout: float = 0.1  # before the head
    variant: str = "loda"
    bn_mode: str = "frozen"
    mean: tuple[float, float, float] = IMAGENET_MEAN  # input normalisation of both backbones
    std: tuple[float, float, float] = IMAGENET_STD
    resize: Resize | None = None  # of every image before its crops; None: native size
    preset: str | None = field(default=None, compare=False)  # the preset it came from, for information

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown LoDa variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"unknown bn_mode {self.bn_mode!r}; choose one of {', '.join(BN_MODES)}")
        missing = [key for key in VIT_KEYS if key not in self.vit] + [key for key in CNN_KEYS if key not in self.cnn]
        if missing:
            raise ValueError(f"LoDa config lacks backbone fields {missing}; start from a preset (loda_preset)")
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if isinstance(self.resize, dict):
            self.resize = Resize.from_dict(self.resize)
        if self.resize is not None and self.resize.smallest_side < self.crop_size:
            raise ValueError(
                f"the resize ({self.resize.describe()}) makes images smaller than the {self.crop_size} px "
                "crops; resize to at least the crop size, or not at all"
            )

    @property
    def crop_size(self) -> int:
        return int(self.vit["image_size"])

    @property
    def uses_cnn(self) -> bool:
        return self.variant in ("loda", "add_tokens")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LoDaConfig:
        reject_unknown_fields(cls, data, "LoDa config", hint=" (the checkpoint may come from a newer version)")
        return cls(**data)

    def replace(self, **changes) -> LoDaConfig:
        return dataclasses.replace(self, **changes)


def loda_preset(name: str, pretrained: bool = True, **changes) -> LoDaConfig:
    """A preset configuration: ``base`` (the paper's ViT-B/16 + ResNet-50, from the official timm checkpoints;
    ``pretrained=False`` gives seeded random backbones, for offline benchmarks) or ``tiny`` (random backbones,
    32 px crops)."""
    if name == "base":
        vit_source, cnn_source = BASE_SOURCES if pretrained else (None, None)
        config = LoDaConfig(
            vit=dict(VIT_B16), cnn=dict(RESNET_50), vit_source=vit_source, cnn_source=cnn_source, preset="base"
        )
    elif name == "tiny":
        # 32 px crops in 4 px patches: 8x8 = 64 patch tokens, matched by 4 stages x 4x4 distortion tokens
        vit = {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 4,
            "layer_norm_eps": 1e-12,
            "qkv_bias": True,
            "hidden_act": "gelu",
        }
        cnn = {
            "embedding_size": 8,
            "hidden_sizes": [16, 32, 64, 128],
            "depths": [1, 1, 1, 1],
            "layer_type": "basic",
            "hidden_act": "relu",
            "downsample_in_first_stage": False,
            "downsample_in_bottleneck": False,
        }
        config = LoDaConfig(vit=vit, cnn=cnn, latent_dim=16, grid_size=4, cross_attn_heads=2, preset="tiny")
    else:
        raise ValueError(f"unknown LoDa preset {name!r}; choose base or tiny")
    return config.replace(**changes) if changes else config
