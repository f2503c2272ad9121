"""The IQA-Adapter: quality projection plus decoupled cross-attention K/V, hosted in diffusers' IP-Adapter
machinery.

Attaching an adapter to a UNet (or to any diffusers pipeline that has one):

* every cross-attention layer gets diffusers' ``IPAdapterAttnProcessor2_0``, computing
  ``Attn(Q, K_text, V_text) + lambda * Attn(Q, K_q, V_q)`` with the query shared; its ``to_k_ip`` /
  ``to_v_ip`` are *this adapter's* K/V modules (shared, not copied), so training updates and
  ``save_pretrained`` see the same tensors; self-attention processors are left untouched;
* ``unet.encoder_hid_proj`` becomes a ``MultiIPAdapterImageProjection`` around the quality projection, so
  the pipeline's ``ip_adapter_image_embeds`` carry the quality features (see :meth:`IQAAdapter.embeds`).

Several IQA-Adapters, and IP-Adapters loaded with ``pipe.load_ip_adapter``, share a UNet as slots of that
machinery (:mod:`iqa_adapter.slots`), each with its own scale. Because the layers are diffusers' own, users get
``pipe.set_ip_adapter_scale`` (global or per block), ``IPAdapterScaleCutoffCallback`` and CFG batching of
negative/positive embeds for free. :meth:`IQAAdapter.detach` of the last adapter restores the exact processors
and projection the UNet had.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .config import CONFIG_NAME, WEIGHTS_NAME, CrossAttentionLayer, IQAAdapterConfig
from .hub import download_file, is_local, upload_files
from .io_utils import atomic_write, load_safetensors
from .projection import build_projection, quality_features
from .slots import AdapterSlots
from .stats import MetricStats
from .targets import QualityTarget, targets_to_z


class AdapterMismatchError(ValueError):
    """An adapter that does not fit the UNet it is attached to."""


class DecoupledKV(nn.Module):
    """The extra key and value projections of one cross-attention layer (no bias, like the text K/V)."""

    def __init__(self, cross_attention_dim: int, hidden_size: int):
        super().__init__()
        self.to_k = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v = nn.Linear(cross_attention_dim, hidden_size, bias=False)


def _unet_of(model) -> nn.Module:
    """The UNet of a pipeline, or the model itself."""
    unet = getattr(model, "unet", model)
    if not hasattr(unet, "attn_processors"):
        raise TypeError(f"expected a diffusers UNet2DConditionModel or a pipeline with one, got {type(model).__name__}")
    return unet


def _base_layer(linear: nn.Module) -> nn.Module:
    """The plain Linear behind a PEFT LoRA wrapper, or the layer itself."""
    return getattr(linear, "base_layer", linear)


def cross_attention_layers(unet: nn.Module) -> list[CrossAttentionLayer]:
    """Every cross-attention layer of a UNet, in ``unet.attn_processors`` order."""
    layers = []
    for processor_name in unet.attn_processors:
        name = processor_name.removesuffix(".processor")
        attention = unet.get_submodule(name)
        if getattr(attention, "is_cross_attention", False):
            layers.append(CrossAttentionLayer(name=name, hidden_size=_base_layer(attention.to_k).out_features))
    if not layers:
        raise AdapterMismatchError("this UNet has no cross-attention layers to attach an IQA-Adapter to")
    return layers


def _adapter_files(name_or_path: str | os.PathLike, revision: str | None, subfolder: str | None) -> tuple[Path, Path]:
    """The folder that holds an adapter's config and the path of its weights: a local folder as it is, a hub id
    downloaded (or read from the cache)."""
    if is_local(name_or_path):
        if revision is not None:
            raise ValueError(f"{name_or_path} is a local folder: a revision applies to hub ids only")
        directory = Path(name_or_path).expanduser() / (subfolder or "")
        return directory, directory / WEIGHTS_NAME
    name = str(name_or_path)
    config = download_file(name, CONFIG_NAME, what="the adapter", revision=revision, subfolder=subfolder)
    weights = download_file(name, WEIGHTS_NAME, what="the adapter", revision=revision, subfolder=subfolder)
    return config.parent, weights


def describe_width(width: int) -> str:
    known = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
    return f"{width} ({known[width]})" if width in known else str(width)


class IQAAdapter(nn.Module):
    """Quality conditioning for a frozen text-to-image UNet.

    Create a fresh one for a base model with :meth:`for_unet`, load a trained one with
    :meth:`from_pretrained`, then :meth:`attach` it to a pipeline and pass :meth:`embeds` as
    ``ip_adapter_image_embeds`` (or use :func:`iqa_adapter.generate`).
    """

    def __init__(self, config: IQAAdapterConfig):
        super().__init__()
        self.config = config
        self.projection = build_projection(config)
        self.kv = nn.ModuleList(DecoupledKV(config.cross_attention_dim, layer.hidden_size) for layer in config.layers)
        if config.condition == "reference":  # standardisation of the reference features, set from training data
            self.register_buffer("feature_mean", torch.zeros(config.condition_dim))
            self.register_buffer("feature_std", torch.ones(config.condition_dim))
        self._attachment: dict | None = None
        self._per_image_embeds: torch.Tensor | None = None
        self.source_directory: Path | None = None  # the folder it was loaded from (resolves relative metric paths)
        self.scale: float | Mapping | None = None  # the lambda last set while attached

    # ------------------------------------------------------------------ construction and checkpoints
    @classmethod
    def for_unet(
        cls,
        unet_or_pipeline,
        metrics: Sequence[MetricStats] = (),
        *,
        reference: dict | None = None,
        num_tokens: int = 2,
        projection: str = "linear",
        mlp_hidden_dim: int = 128,
        encoding_frequencies: int = 0,
        flag_feature: bool = True,
        default_scale: float = 0.5,
        base_model: str | None = None,
        seed: int | None = None,
    ) -> IQAAdapter:
        """A new adapter for this UNet, its quality K/V initialised from each layer's text K/V.

        Conditioned on the z-scores of ``metrics``, or, with ``reference={"metric", "layers", "feature_dim"}``,
        on the features of a reference image (:mod:`iqa_adapter.reference`).
        """
        unet = _unet_of(unet_or_pipeline)
        if base_model is None:
            base_model = getattr(unet.config, "_name_or_path", None) or None
        config = IQAAdapterConfig(
            cross_attention_dim=int(unet.config.cross_attention_dim),
            layers=cross_attention_layers(unet),
            metrics=list(metrics),
            num_tokens=num_tokens,
            projection=projection,
            mlp_hidden_dim=mlp_hidden_dim,
            encoding_frequencies=encoding_frequencies,
            flag_feature=flag_feature,
            default_scale=default_scale,
            base_model=base_model,
            condition="scores" if reference is None else "reference",
            reference=reference,
        )
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                adapter = cls(config)
        else:
            adapter = cls(config)
        adapter.init_from_text_kv(unet)
        return adapter

    @torch.no_grad()
    def init_from_text_kv(self, unet_or_pipeline) -> None:
        """Copy each layer's text ``to_k`` / ``to_v`` weights into the quality K/V (paper and IP-Adapter init)."""
        unet = _unet_of(unet_or_pipeline)
        self._check_compatible(unet)
        for layer, kv in zip(self.config.layers, self.kv):
            attention = unet.get_submodule(layer.name)
            kv.to_k.weight.copy_(_base_layer(attention.to_k).weight)
            kv.to_v.weight.copy_(_base_layer(attention.to_v).weight)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``adapter.safetensors`` (adapter weights only), each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(state, path, metadata={"format": "pt"}))
        atomic_write(directory / CONFIG_NAME, lambda path: self.config.save_to_file(path))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        subfolder: str | None = None,
        device=None,
        dtype=None,
    ) -> IQAAdapter:
        """Load an adapter written by :meth:`save_pretrained` (safetensors only): a local folder, or a hub id
        (``org/name``, at ``revision``) whose ``subfolder`` holds the files, through huggingface_hub's download
        and cache (``HF_HUB_OFFLINE`` and an unreachable Hub read the cache alone)."""
        directory, weights = _adapter_files(name_or_path, revision, subfolder)
        config = IQAAdapterConfig.load(directory)
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        adapter = cls(config)
        adapter.source_directory = directory
        state = load_safetensors(weights, "adapter weights")
        try:
            missing, unexpected = adapter.load_state_dict(state, strict=False)
        except RuntimeError as error:  # tensor shapes that differ from the config's
            raise ValueError(
                f"{weights} does not match {directory / CONFIG_NAME}: {' '.join(str(error).split())[:300]}"
            ) from None
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not match {directory / CONFIG_NAME}: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        return adapter.to(device=device, dtype=dtype)

    @classmethod
    def from_official(
        cls, checkpoint: str | os.PathLike, base, metrics: Sequence[str] | None = None, **options
    ) -> IQAAdapter:
        """An official IQA-Adapter checkpoint (a local file, or a hub repository with ``weight_name=``), its
        metrics named or read from the file name: see :func:`iqa_adapter.convert.from_official`."""
        from .convert import from_official

        return from_official(checkpoint, base, metrics, **options)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        evaluation: Mapping | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        license: str | None = None,
        commit_message: str = "Upload IQA-Adapter",
    ) -> str:
        """Upload ``config.json``, ``adapter.safetensors`` and a model card (``README.md``: base model, metrics
        and their statistics, training recipe, scale and target conventions, usage, and the figures of an
        ``evaluate`` report when ``evaluation`` is given) to the hub model repository ``repo_id``, created
        when missing; returns the commit's URL."""
        from .model_card import adapter_model_card

        card = adapter_model_card(self.config, repo_id, evaluation=evaluation, license=license)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            files = {name: Path(folder) / name for name in (CONFIG_NAME, WEIGHTS_NAME)}
            return upload_files(
                repo_id,
                {**files, "README.md": card.encode()},
                what="the adapter",
                token=token,
                private=private,
                revision=revision,
                commit_message=commit_message,
            )

    # ------------------------------------------------------------------ attaching to a UNet
    def _check_compatible(self, unet: nn.Module) -> None:
        width = int(unet.config.cross_attention_dim)
        if width != self.config.cross_attention_dim:
            raise AdapterMismatchError(
                f"adapter was made for a base model with cross-attention width "
                f"{describe_width(self.config.cross_attention_dim)} (base {self.config.base_model!r}), but this "
                f"UNet has width {describe_width(width)}: load the adapter trained for this base model"
            )
        expected = [(layer.name, layer.hidden_size) for layer in self.config.layers]
        found = [(layer.name, layer.hidden_size) for layer in cross_attention_layers(unet)]
        if expected != found:
            difference = sorted(set(expected) ^ set(found))[:4]
            raise AdapterMismatchError(
                f"adapter has {len(expected)} cross-attention layers, this UNet has {len(found)}; they differ at "
                f"{difference}: the adapter was made for another architecture (base {self.config.base_model!r})"
            )

    @property
    def is_attached(self) -> bool:
        return self._attachment is not None

    @property
    def attached_unet(self) -> nn.Module | None:
        """The UNet the adapter is attached to, if any."""
        return None if self._attachment is None else self._attachment["unet"]

    def attach(self, unet_or_pipeline, scale: float | Mapping | None = None, *, cast: bool = True) -> IQAAdapter:
        """Install the adapter's layers into a UNet or pipeline; ``scale`` defaults to the config's.

        Several adapters can be attached to one UNet, beside IP-Adapters loaded with ``pipe.load_ip_adapter``
        (load those first): each gets a slot of diffusers' multi-IP-Adapter machinery (:mod:`iqa_adapter.slots`),
        after diffusers' slots, in attach order. The adapter moves to the UNet's device and, with ``cast``
        (default), to its dtype. Training keeps float32 adapter weights on a half-precision UNet (``cast=False``)
        and runs under autocast.
        """
        unet = _unet_of(unet_or_pipeline)
        if self._attachment is not None:
            raise RuntimeError("this adapter is already attached; call detach() first")
        self._check_compatible(unet)
        slots = AdapterSlots.of(unet, create=True)
        others = [adapter.config.layers for adapter in slots.adapters]
        if others and others[0] != self.config.layers:
            raise AdapterMismatchError("the adapters attached to this UNet were made for other cross-attention layers")
        parameter = next(unet.parameters())
        self.to(device=parameter.device, dtype=parameter.dtype if cast else None)
        self.scale = self.config.default_scale if scale is None else scale
        try:
            slots.add(self)
        except Exception:
            slots.remove(self)
            raise
        self._attachment = {
            "unet": unet,
            "hook": unet.register_forward_pre_hook(self._route_quality_embeds, with_kwargs=True),
        }
        return self

    def detach(self) -> None:
        """Take the adapter out of its UNet; other attached adapters keep working, and after the last one the UNet
        is exactly as it was before the first :meth:`attach` (the same processor objects and projection)."""
        if self._attachment is None:
            raise RuntimeError("this adapter is not attached")
        attachment, self._attachment = self._attachment, None
        attachment["hook"].remove()
        AdapterSlots.of(attachment["unet"]).remove(self)

    @property
    def slot(self) -> int:
        """This adapter's position in the UNet's IP-Adapter slots (in ``ip_adapter_image_embeds``)."""
        if self._attachment is None:
            raise RuntimeError("attach the adapter first")
        return AdapterSlots.of(self.attached_unet).index(self)

    def set_scale(self, scale: float | Mapping) -> None:
        """Adapter strength lambda of this adapter's slot: a float, or a per-block dict in diffusers' form, e.g.
        ``{"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}}`` (unlisted blocks get 0),
        expanded by diffusers' own code. ``pipe.set_ip_adapter_scale`` sets every slot at once."""
        if self._attachment is None:
            raise RuntimeError("attach the adapter before setting its scale")
        AdapterSlots.of(self.attached_unet).set_scale(self, scale)
        self.scale = scale

    def _route_quality_embeds(self, unet, args, kwargs):
        """UNet pre-hook: one quality feature row per sample in this adapter's slot, never a silent mix.

        diffusers pipelines repeat ``ip_adapter_image_embeds`` ``batch x num_images`` times, so B different
        vectors passed for B prompts become B*B rows that every sample attends to together (diffusers issue
        9813). Inside :meth:`per_image_embeds` the rows given there replace what the pipeline built;
        otherwise a row count that differs from the UNet batch is an error instead of a silent mix.
        """
        added = kwargs.get("added_cond_kwargs") or {}
        if "image_embeds" not in added:
            return None
        slots, embeds = AdapterSlots.of(unet), list(added["image_embeds"])
        slot = slots.index(self)
        if len(embeds) != slots.count:
            raise ValueError(
                f"the UNet got {len(embeds)} ip_adapter_image_embeds for its {slots.count} "
                "IP-Adapter slots: pass one per slot, in slot order (adapter.slot tells an adapter's)"
            )
        batch = (args[0] if args else kwargs["sample"]).shape[0]
        if self._per_image_embeds is not None:
            rows = self._per_image_embeds
            if rows.shape[0] != batch:
                raise ValueError(f"per-image quality embeds have {rows.shape[0]} rows for a UNet batch of {batch}")
            embeds[slot] = rows
            return args, {**kwargs, "added_cond_kwargs": {**added, "image_embeds": embeds}}
        rows = embeds[slot].shape[0]
        if rows != batch:
            raise ValueError(
                f"the UNet got {rows} quality-embedding rows for a batch of {batch} samples: diffusers pipelines "
                "repeat ip_adapter_image_embeds per prompt and image, which mixes per-image quality vectors. "
                "Pass one quality vector per call, or use iqa_adapter.generate() / adapter.per_image_embeds()"
            )
        return None

    @contextmanager
    def per_image_embeds(self, embeds: list[torch.Tensor]):
        """Within this block, pipeline calls use these rows (from :meth:`embeds`, one per image) as they are.

        Pass ``ip_adapter_image_embeds=adapter.pipeline_placeholder(embeds)`` to the pipeline call.
        """
        if self._attachment is None:
            raise RuntimeError("attach the adapter before generating")
        self._per_image_embeds = embeds[0]
        try:
            yield
        finally:
            self._per_image_embeds = None

    @staticmethod
    def pipeline_placeholder(
        embeds: list[torch.Tensor], do_classifier_free_guidance: bool = True
    ) -> list[torch.Tensor]:
        """One row per CFG half of ``embeds``: what a pipeline must receive so that, after it repeats the
        rows per image, the batch matches the rows installed by :meth:`per_image_embeds`."""
        rows = embeds[0]
        if do_classifier_free_guidance:
            half = rows.shape[0] // 2
            return [torch.cat([rows[:1], rows[half : half + 1]])]
        return [rows[:1]]

    # ------------------------------------------------------------------ quality conditions
    @property
    def metric_names(self) -> list[str]:
        return self.config.metric_names

    def z_scores(self, targets: Mapping[str, QualityTarget]) -> torch.Tensor:
        """Z-scores (D,) for a mapping ``{metric: "p99" | "z2.0" | raw value}`` covering every metric."""
        return torch.tensor(
            targets_to_z(targets, self.config.metrics, self.config.default_targets), dtype=torch.float32
        )

    def complete_targets(self, targets: Mapping[str, QualityTarget]) -> dict[str, QualityTarget]:
        """``targets`` with the config's default targets for the metrics they do not name."""
        return {**self.config.default_targets, **targets}

    def condition_inputs(self, values: torch.Tensor) -> torch.Tensor:
        """Projection input for raw conditions (..., D): z-scores, or reference features (standardised here);
        flag and sinusoidal encoding applied."""
        values = torch.as_tensor(values, dtype=torch.float32)
        if values.shape[-1] != self.config.condition_dim:
            what = (
                f"z-scores ({', '.join(self.metric_names)})"
                if self.config.condition == "scores"
                else "reference features"
            )
            raise ValueError(f"expected {self.config.condition_dim} {what}, got shape {tuple(values.shape)}")
        if self.config.condition == "reference":
            values = (values - self.feature_mean.float().to(values.device)) / self.feature_std.float().to(values.device)
        return quality_features(values, self.config.flag_feature, self.config.encoding_frequencies)

    def null_inputs(self, batch_size: int) -> torch.Tensor:
        """The dropped condition used in training (all-zero projection input): the plain CFG unconditional input."""
        return torch.zeros(batch_size, self.config.feature_dim)

    def stack_embeds(
        self, positive: torch.Tensor, negative: torch.Tensor | None = None, do_classifier_free_guidance: bool = True
    ) -> list[torch.Tensor]:
        """``ip_adapter_image_embeds`` from projection inputs (B, F): ``[cat([unconditional, conditional])]``
        under CFG, the unconditional half being ``negative`` or, when it is None, the dropped condition."""
        tensors = [positive]
        if do_classifier_free_guidance:
            tensors = [self.null_inputs(len(positive)) if negative is None else negative, positive]
        parameter = self.projection.norm.weight
        return [torch.cat([t.to(parameter.device) for t in tensors])[:, None, :].to(dtype=parameter.dtype)]

    def embeds(
        self,
        z: torch.Tensor,
        *,
        negative_quality: float | None = None,
        do_classifier_free_guidance: bool = True,
    ) -> list[torch.Tensor]:
        """Quality features for the UNet, as ``ip_adapter_image_embeds``: ``[cat([unconditional, conditional])]``.

        ``z`` is (B, D), or (D,) for one vector. A single vector can go straight into a pipeline call
        (``pipe(..., ip_adapter_image_embeds=adapter.embeds(z))``), which repeats it for every image. For a
        different vector per image use :func:`iqa_adapter.generate` (or :meth:`per_image_embeds`). Under CFG,
        the unconditional half is the dropped condition, or, with ``negative_quality=k``, the negative
        quality condition ``-k * z`` (paper section 8; the paper uses k = 1, the official code 0.5), at no
        extra UNet cost. The flag feature, when used, stays 1.0 in the negative branch (it marks "a condition
        is present").
        """
        if self.config.condition != "scores":
            raise ValueError("this adapter is conditioned on reference images: use reference_embeds()")
        z = torch.as_tensor(z, dtype=torch.float32)
        if z.ndim == 1:
            z = z[None]
        negative = None if negative_quality is None else self.condition_inputs(-negative_quality * z)
        return self.stack_embeds(self.condition_inputs(z), negative, do_classifier_free_guidance)

    def reference_encoder(self, device=None):
        """The :class:`~iqa_adapter.reference.ReferenceEncoder` the config names (a metric path relative to the
        adapter's folder, such as ``loda:../loda``, is resolved against it)."""
        from .metrics.registry import resolve_metric_path
        from .reference import ReferenceEncoder, ReferenceSpec

        if self.config.condition != "reference":
            raise ValueError("this adapter is conditioned on quality scores, not on reference images")
        metric = self.config.reference["metric"]
        if self.source_directory is not None:
            metric = resolve_metric_path(metric, self.source_directory)
        return ReferenceEncoder.from_spec(ReferenceSpec(metric, tuple(self.config.reference["layers"])), device=device)

    def reference_embeds(
        self,
        features: torch.Tensor,
        negative_features: torch.Tensor | None = None,
        *,
        do_classifier_free_guidance: bool = True,
    ) -> list[torch.Tensor]:
        """Reference-image features (B, F) (from :class:`~iqa_adapter.reference.ReferenceEncoder`) for the
        UNet. Under CFG the unconditional half holds ``negative_features`` (e.g. of a clean image, to push
        away from it) or, when None, the dropped condition."""
        if self.config.condition != "reference":
            raise ValueError("this adapter is conditioned on quality scores: use embeds()")
        features = torch.as_tensor(features, dtype=torch.float32)
        features = features[None] if features.ndim == 1 else features
        negative = None
        if negative_features is not None:
            negative = torch.as_tensor(negative_features, dtype=torch.float32)
            negative = self.condition_inputs(negative[None] if negative.ndim == 1 else negative).expand(
                len(features), -1
            )
        return self.stack_embeds(self.condition_inputs(features), negative, do_classifier_free_guidance)
