"""Several adapters in one UNet, through diffusers' multi-IP-Adapter machinery.

diffusers hosts N IP-Adapters in a UNet as N *slots*: every cross-attention processor
(``IPAdapterAttnProcessor2_0``) holds N ``to_k_ip`` / ``to_v_ip`` modules, N token counts and N scales, and
``unet.encoder_hid_proj`` is a ``MultiIPAdapterImageProjection`` of N projections; a pipeline call passes
``ip_adapter_image_embeds`` as a list of N tensors, one per slot. :class:`AdapterSlots` keeps what the UNet had
before the first IQA-Adapter was attached (plain processors, or the slots of IP-Adapters loaded with
``pipe.load_ip_adapter``) and lays the attached IQA-Adapters after those slots, in the order they were attached.
Detaching one rebuilds the slots without it; detaching the last restores the UNet's own processors and projection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from diffusers.callbacks import IPAdapterScaleCutoffCallback
from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import MultiIPAdapterImageProjection
from torch import nn

if TYPE_CHECKING:
    from .adapter import IQAAdapter

ENCODER_HID_DIM_TYPE = "ip_image_proj"
"""diffusers' ``encoder_hid_dim_type`` that routes ``added_cond_kwargs["image_embeds"]`` to the projections."""
IP_PROCESSORS = (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)
_ATTRIBUTE = "_iqa_adapter_slots"


def layer_scales(unet: nn.Module, scale: float | Mapping, layers: list[str]) -> dict[str, float]:
    """The scale of each layer in ``layers`` for a float or a per-block dict in diffusers' form (unlisted blocks
    get 0), expanded and validated by diffusers' own code, as ``pipe.set_ip_adapter_scale`` does."""
    from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales

    config = _maybe_expand_lora_scales(unet, [scale], default_scale=0.0)[0]
    if not isinstance(config, dict):
        return {layer: float(config) for layer in layers}
    values = {}
    for layer in layers:
        for prefix, value in config.items():
            if f"{layer}.processor".startswith(prefix):
                values[layer] = float(value)
    return {layer: values.get(layer, 0.0) for layer in layers}


class AdapterSlots:
    """The IQA-Adapters attached to one UNet and what the UNet had before them (see the module docstring)."""

    def __init__(self, unet: nn.Module):
        projection = unet.encoder_hid_proj
        if projection is not None and not isinstance(projection, MultiIPAdapterImageProjection):
            raise RuntimeError(
                f"this UNet has an encoder_hid_proj of its own ({type(projection).__name__}, e.g. a text projection), "
                "which IP-Adapter slots would replace; IQA-Adapters cannot be attached to it"
            )
        self.unet = unet
        self.processors = dict(unet.attn_processors)  # the UNet's own (diffusers' IP-Adapter slots included)
        self.encoder_hid_proj = projection
        self.encoder_hid_dim_type = unet.config.encoder_hid_dim_type
        self.external = 0 if projection is None else len(projection.image_projection_layers)
        self.adapters: list[IQAAdapter] = []

    @classmethod
    def of(cls, unet: nn.Module, create: bool = False) -> AdapterSlots | None:
        """The slots of ``unet`` (made when ``create`` and there are none yet)."""
        slots = getattr(unet, _ATTRIBUTE, None)
        if slots is None and create:
            slots = cls(unet)
            object.__setattr__(unet, _ATTRIBUTE, slots)  # a plain attribute, not a submodule
        return slots

    def index(self, adapter: IQAAdapter) -> int:
        """The slot of ``adapter``: its position in ``image_embeds`` and in every processor's lists."""
        position = next((i for i, attached in enumerate(self.adapters) if attached is adapter), None)
        if position is None:
            raise RuntimeError("this adapter is not attached to this UNet")
        if self.unet.encoder_hid_proj is None or not any(
            layer is adapter.projection for layer in self.unet.encoder_hid_proj.image_projection_layers
        ):
            raise RuntimeError(
                "the UNet's IP-Adapter layers were replaced since the IQA-Adapter was attached (pipe.load_ip_adapter "
                "or pipe.unload_ip_adapter after attach?): load diffusers' IP-Adapters first, then attach IQA-Adapters"
            )
        return self.external + position

    @property
    def count(self) -> int:
        """How many slots the UNet has: diffusers' IP-Adapters, then the IQA-Adapters."""
        return self.external + len(self.adapters)

    def add(self, adapter: IQAAdapter) -> None:
        self.adapters.append(adapter)
        self.rebuild()

    def remove(self, adapter: IQAAdapter) -> None:
        """Take ``adapter`` out; with the last one gone, the UNet gets its own processors and projection back."""
        self.adapters = [attached for attached in self.adapters if attached is not adapter]
        if self.adapters:
            self.rebuild()
            return
        self.unet.set_attn_processor(dict(self.processors))  # diffusers empties the dict it is given
        self.unet.encoder_hid_proj = self.encoder_hid_proj
        self.unet.config.encoder_hid_dim_type = self.encoder_hid_dim_type
        object.__delattr__(self.unet, _ATTRIBUTE)

    def rebuild(self) -> None:
        """Install processors and projections for the UNet's own slots followed by every attached IQA-Adapter's,
        each IQA-Adapter at its own scale per layer."""
        first = self.adapters[0].config
        names = [layer.name for layer in first.layers]
        scales = [layer_scales(self.unet, adapter.scale, names) for adapter in self.adapters]
        processors = dict(self.processors)
        for position, layer in enumerate(first.layers):
            own = self.processors[f"{layer.name}.processor"]
            own_slots = isinstance(own, IP_PROCESSORS)
            with torch.device("meta"):  # diffusers makes K/V modules of its own; ours replace them below
                processor = IPAdapterAttnProcessor2_0(
                    hidden_size=layer.hidden_size,
                    cross_attention_dim=first.cross_attention_dim,
                    num_tokens=(*(own.num_tokens if own_slots else ()), *(a.config.num_tokens for a in self.adapters)),
                    scale=[*(own.scale if own_slots else []), *(values[layer.name] for values in scales)],
                )
            processor.to_k_ip = nn.ModuleList(
                [*(own.to_k_ip if own_slots else []), *(adapter.kv[position].to_k for adapter in self.adapters)]
            )
            processor.to_v_ip = nn.ModuleList(
                [*(own.to_v_ip if own_slots else []), *(adapter.kv[position].to_v for adapter in self.adapters)]
            )
            processors[f"{layer.name}.processor"] = processor
        self.unet.set_attn_processor(processors)
        own_projections = [] if self.encoder_hid_proj is None else list(self.encoder_hid_proj.image_projection_layers)
        self.unet.encoder_hid_proj = MultiIPAdapterImageProjection(
            own_projections + [adapter.projection for adapter in self.adapters]
        )
        self.unet.config.encoder_hid_dim_type = ENCODER_HID_DIM_TYPE

    def set_scale(self, adapter: IQAAdapter, scale: float | Mapping) -> None:
        """Set the scale of ``adapter``'s slot alone (a float or a per-block dict)."""
        slot = self.index(adapter)
        values = layer_scales(self.unet, scale, [layer.name for layer in adapter.config.layers])
        for name, value in values.items():
            self.unet.get_submodule(name).processor.scale[slot] = value


class ScaleCutoffCallback(IPAdapterScaleCutoffCallback):
    """diffusers' ``IPAdapterScaleCutoffCallback`` for any number of slots: from the cutoff step on (``cutoff_step_ratio``
    or ``cutoff_step_index``) every slot's scale is 0. diffusers' own calls ``pipe.set_ip_adapter_scale(0.0)``,
    which raises as soon as a UNet has two slots (it checks the count before broadcasting one value)."""

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs) -> dict:
        cutoff = self.config.cutoff_step_index
        if cutoff is None:
            cutoff = int(pipeline.num_timesteps * self.config.cutoff_step_ratio)
        if step_index == cutoff:
            for processor in pipeline.unet.attn_processors.values():
                if isinstance(processor, IP_PROCESSORS):
                    processor.scale = [0.0] * len(processor.scale)
        return callback_kwargs
