"""Reference features: activations of an IQA model on a reference image, the condition of a reference-based
IQA-Adapter.

The paper does not describe this variant. It comes from the official repository, whose README says that the
reference-based IQA-Adapter "employs information-rich activation space of IQA models to transfer only
quality-related features from the reference image without leaking its semantics", and whose code holds the
inference classes (``RefBasedIQAAdapter``) but no training code. The choices below (which activations, how
they are pooled and standardised) are this project's and are documented here.

A :class:`ReferenceSpec` names a registry metric and some of its layers, written ``<metric>:<layers>``:
``loda:checkpoints/loda:distortion_tokens,cls`` or ``pyiqa:topiq_nr:semantic_model.layer4``. The last
``:`` separates the metric from the comma-separated layers. A layer is either a key of the metric's
``features(images)`` (LoDa: ``cls``, ``distortion_tokens``, ``injected.<i>``) or, for any other metric (pyiqa
networks), the path of one of its submodules, whose output is captured by a forward hook while the metric
scores the image.

:class:`ReferenceEncoder` turns images into one vector each: every chosen activation is averaged over its
tokens ``(N, L, C)`` or spatial positions ``(N, C, H, W)`` into ``(N, C)``, and the layers are
concatenated in the order given. Averaging keeps the statistics of local distortions (noise, blur, blocks)
while dropping where things are in the image, which is what should transfer and what should not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from .images import rgb_tensor
from .metrics import QualityMetric, create_metric

PROBE_SIZE = 64


@dataclass(frozen=True)
class ReferenceSpec:
    """Which IQA model and which of its layers describe a reference image."""

    metric: str
    layers: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> ReferenceSpec:
        metric, separator, layers = text.rpartition(":")
        names = tuple(name.strip() for name in layers.split(",") if name.strip())
        if not separator or not metric or not names:
            raise ValueError(
                f"reference features are written <metric>:<layer>[,<layer>...], e.g. "
                f"loda:checkpoints/loda:distortion_tokens,cls; got {text!r}"
            )
        return cls(metric, names)

    def __str__(self) -> str:
        return f"{self.metric}:{','.join(self.layers)}"


def pool(activation: torch.Tensor) -> torch.Tensor:
    """(N, C) from (N, C), (N, L, C) tokens or (N, C, H, W) maps, by averaging over tokens or positions."""
    if activation.ndim == 2:
        return activation
    if activation.ndim == 3:
        return activation.mean(dim=1)
    if activation.ndim == 4:
        return activation.mean(dim=(2, 3))
    raise ValueError(f"cannot pool an activation of shape {tuple(activation.shape)} to a vector")


class ReferenceEncoder(nn.Module):
    """Images (N, 3, H, W) in [0, 1] -> reference feature vectors (N, F) from a metric's layers."""

    def __init__(self, metric: QualityMetric, layers: Sequence[str]):
        super().__init__()
        self.metric = metric.eval()
        self.layers = tuple(layers)
        probe = torch.full((1, 3, PROBE_SIZE, PROBE_SIZE), 0.5, device=metric.device)
        named = self._named_features(probe)
        missing = [layer for layer in self.layers if layer not in named and not self._is_module(layer)]
        if missing:
            known = ", ".join(sorted(named)) or "(none)"
            raise ValueError(
                f"metric {metric.name!r} has no layer {missing[0]!r}: its features are {known}, or give "
                "the path of a submodule (e.g. backbone.layer4)"
            )
        self.feature_dim = int(self(probe).shape[1])

    @classmethod
    def from_spec(cls, spec: ReferenceSpec | str, device=None) -> ReferenceEncoder:
        spec = ReferenceSpec.parse(spec) if isinstance(spec, str) else spec
        return cls(create_metric(spec.metric, device=device), spec.layers)

    def _is_module(self, path: str) -> bool:
        try:
            self.metric.get_submodule(path)
        except AttributeError:
            return False
        return True

    def _named_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        try:
            return self.metric.features(images)
        except NotImplementedError:
            return {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        named = self._named_features(images) if any(not self._is_module(layer) for layer in self.layers) else {}
        hooked: dict[str, torch.Tensor] = {}
        hooks = [
            self.metric.get_submodule(layer).register_forward_hook(
                lambda module, args, output, layer=layer: hooked.__setitem__(
                    layer, output[0] if isinstance(output, (tuple, list)) else output
                )
            )
            for layer in self.layers
            if layer not in named
        ]
        try:
            if hooks:
                self.metric(images)
        finally:
            for hook in hooks:
                hook.remove()
        activations = {**hooked, **named}
        return torch.cat([pool(activations[layer].float()) for layer in self.layers], dim=1)

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Feature vectors (N, F) of PIL images or of a tensor batch in [0, 1], without gradients."""
        if torch.is_tensor(images):
            return self(images.to(self.metric.device))
        tensors = [rgb_tensor(image) for image in images]  # images may differ in size: one at a time
        return torch.cat([self(tensor[None].to(self.metric.device)) for tensor in tensors])
