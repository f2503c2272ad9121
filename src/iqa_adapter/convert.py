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

import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from .adapter import AdapterMismatchError, IQAAdapter, cross_attention_layers, describe_width
from .config import IQAAdapterConfig
from .io_utils import load_safetensors
from .stats import MetricStats

OFFICIAL_ADAPTERS: dict[str, tuple[str, ...]] = {
    "TOPIQ (KonIQ), LAION-AES": ("topiq_nr", "laion_aes"),
    "4xTOPIQ (KonIQ, FLIVE, SPAQ, AVA)": ("topiq_nr", "topiq_nr-flive", "topiq_nr-spaq", "topiq_iaa"),
    "3xARNIQA (KonIQ, FLIVE, KADID), LIQE-MIX": ("arniqa", "arniqa-flive", "arniqa-kadid", "liqe_mix"),
    "2xMUSIQ (KonIQ, AVA)": ("musiq", "musiq-ava"),
    "CLIP-IQA+, LIQE-MIX": ("clipiqa+", "liqe_mix"),
    "TOPIQ (KonIQ)": ("topiq_nr",),
    "TOPIQ (FLIVE)": ("topiq_nr-flive",),
    "TOPIQ (SPAQ)": ("topiq_nr-spaq",),
    "TOPIQ (AVA)": ("topiq_iaa",),
    "LAION-AES": ("laion_aes",),
    "NIMA (AVA)": ("nima-vgg16-ava",),
    "MUSIQ (KonIQ)": ("musiq",),
    "MUSIQ (AVA)": ("musiq-ava",),
    "MUSIQ (FLIVE)": ("musiq-paq2piq",),
    "MANIQA (KonIQ)": ("maniqa",),
    "MANIQA (PIPAL)": ("maniqa-pipal",),
    "ARNIQA (KonIQ)": ("arniqa",),
    "ARNIQA (FLIVE)": ("arniqa-flive",),
    "ARNIQA (KADID)": ("arniqa-kadid",),
    "LIQE": ("liqe",),
    "LIQE-MIX": ("liqe_mix",),
    "CLIP-IQA+": ("clipiqa+",),
    "HYPER-IQA": ("hyperiqa",),
    "DBCNN": ("dbcnn",),
    "CNNIQA": ("cnniqa",),
    "TReS (FLIVE)": ("tres-flive",),
}
"""The adapters of the paper (supplement Table 4, Figure 3a) by their pyiqa metrics, in the order this library
assumes they were trained (the official ``--features`` order; for the combinations the paper does not state it)."""

_KV_KEY = re.compile(r"^(\d+)\.to_([kv])_ip(?:\.0)?\.weight$")
_PREFIXES = (("image_proj.", "ip_adapter."), ("qual_proj_model.", "adapter_modules."))


def _read_flat(path: Path, trust_pickle: bool) -> dict:
    """The tensors of a checkpoint file by key (safetensors, or a torch pickle read with ``weights_only``)."""
    if path.suffix == ".safetensors":
        return load_safetensors(path, "checkpoint")
    if not trust_pickle:
        raise ValueError(
            f"{path} is a torch pickle file, which can run code when loaded; pass --trust-pickle "
            "(trust_pickle=True) if it comes from a source you trust, or convert it to safetensors"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise ValueError(
            f"{path} holds more than tensors, and torch refused to load it with weights_only=True "
            f"({' '.join(first_line.split())[:200]}); this tool never unpickles arbitrary objects: "
            "save its state dict alone, or as safetensors, where it was made"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:  # a truncated zip or a file that is no torch pickle at all
        raise ValueError(
            f"{path} is not a readable torch checkpoint ({' '.join(str(error).split())[:200]}): "
            "the file is truncated or corrupt"
        ) from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a dict of tensors")
    if "image_proj" in loaded and "ip_adapter" in loaded:
        flat = {f"image_proj.{k}": v for k, v in loaded["image_proj"].items()}
        flat.update({f"ip_adapter.{k}": v for k, v in loaded["ip_adapter"].items()})
        return flat
    return loaded


def existing_checkpoint(path: str | Path) -> Path:
    """``path`` as a Path, or the one-line error for a checkpoint file that does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"official checkpoint {path} does not exist; for a file on the Hub give the repository and "
            "--weight-name (weight_name=) of the file in it"
        )
    return path


def read_official_checkpoint(path: str | Path, trust_pickle: bool = False) -> tuple[dict, dict]:
    """The projection state and ``{processor id: {"k": W, "v": W}}`` of an official checkpoint."""
    path = existing_checkpoint(path)
    flat = _read_flat(path, trust_pickle)
    prefixes = next((pair for pair in _PREFIXES if any(key.startswith(pair[0]) for key in flat)), None)
    if prefixes is None:
        raise ValueError(
            f"{path} is not an official IQA-Adapter checkpoint: no keys start with 'image_proj.' or "
            f"'qual_proj_model.' (first keys: {sorted(flat)[:5]})"
        )
    projection_prefix, layers_prefix = prefixes
    projection = {k[len(projection_prefix) :]: v for k, v in flat.items() if k.startswith(projection_prefix)}
    kv: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        if key.startswith(layers_prefix):
            match = _KV_KEY.match(key[len(layers_prefix) :])
            if match is None:
                raise ValueError(f"{path}: unexpected adapter key {key!r}")
            kv.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return projection, kv


def _infer_features(in_features: int, num_metrics: int, encoding_frequencies: int | None = None) -> tuple[bool, int]:
    """(flag_feature, encoding_frequencies) such that (D + flag) * (2L + 1) == in_features.

    For a given L the flag is unambiguous (of D and D + 1 only one can divide in_features / (2L + 1)). L is
    inferred only when it is 0 (in_features is D or D + 1): a wider projection could also be another number of
    metrics with the flag, so the sinusoidal encoding must then be confirmed with ``encoding_frequencies``.
    """
    if encoding_frequencies is None:
        for flag in (False, True):
            if in_features == num_metrics + int(flag):
                return flag, 0
        readings = [f"{in_features - 1} metrics with the flag feature", f"{in_features} metrics without it"]
        readings += [
            f"{num_metrics} metric(s) with sinusoidal encoding L={(in_features // (num_metrics + flag) - 1) // 2}"
            f"{' and the flag' if flag else ''}"
            for flag in (0, 1)
            if in_features % (num_metrics + flag) == 0 and (in_features // (num_metrics + flag) - 1) % 2 == 0
        ]
        raise ValueError(
            f"the checkpoint's projection takes {in_features} features, not {num_metrics} (+1 with the flag feature) "
            f"as {num_metrics} metric(s) would give: it may be {', or '.join(readings)}; list the checkpoint's metrics "
            "in --metrics, or confirm a sinusoidal encoding with --encoding-frequencies L"
        )
    width = 2 * encoding_frequencies + 1
    for flag in (False, True):
        if in_features == (num_metrics + int(flag)) * width:
            return flag, encoding_frequencies
    raise ValueError(
        f"the checkpoint's projection takes {in_features} features, which {num_metrics} metric(s) with sinusoidal "
        f"encoding L={encoding_frequencies} do not give ({num_metrics * width} or {(num_metrics + 1) * width} with "
        "the flag feature): check --metrics and --encoding-frequencies"
    )


def convert_official(
    path: str | Path,
    unet,
    metrics: Sequence[MetricStats],
    *,
    trust_pickle: bool = False,
    base_model: str | None = None,
    default_scale: float = 0.5,
    encoding_frequencies: int | None = None,
) -> IQAAdapter:
    """An :class:`IQAAdapter` holding the weights of an official checkpoint for this UNet architecture.

    ``unet`` only provides the layer structure (a UNet built on the ``meta`` device is enough);
    ``metrics`` are the metrics the checkpoint was trained on, in its feature order. ``encoding_frequencies``
    confirms a sinusoidal encoding when the projection's width leaves the layout ambiguous
    (:func:`_infer_features`).
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
    flag, frequencies = _infer_features(projection[first].shape[1], len(metrics), encoding_frequencies)
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


def metrics_from_file_name(path: str | Path, known: Sequence[str]) -> list[str]:
    """The metric names of ``known`` that the file name of ``path`` (else its folder's name) spells, in the order
    they appear: ``iqa_adapter_topiq_nr_laion_aes.bin`` -> ``["topiq_nr", "laion_aes"]``. The longest name wins
    where names overlap (``topiq_nr-flive`` over ``topiq_nr``); a name must stand between separators."""
    by_length = sorted(known, key=len, reverse=True)
    for text in (Path(path).stem, Path(path).parent.name):
        found, position = [], 0
        while position < len(text):
            if position == 0 or not text[position - 1].isalnum():
                match = next(
                    (
                        name
                        for name in by_length
                        if text.startswith(name, position)
                        and (
                            position + len(name) == len(text)
                            or not text[position + len(name)].isalnum()
                            or name[-1] == "+"
                        )
                    ),
                    None,
                )
                if match is not None:
                    found.append(match)
                    position += len(match)
                    continue
            position += 1
        if found:
            return found
    return []


def load_unet_structure(base: str):
    """The UNet of ``base`` (diffusers directory, hub id, or ``sd15`` / ``sdxl``) on the meta device."""
    from diffusers import UNet2DConditionModel

    from .architectures import UNET_CONFIGS, unet_from_config
    from .hub import loading_options, not_found_message

    if base in UNET_CONFIGS:
        return unet_from_config(base, device="meta")
    options = loading_options(base)
    try:
        config = UNet2DConditionModel.load_config(base, subfolder="unet", **options)
    except (OSError, ValueError) as error:
        if options:
            raise ValueError(not_found_message(base, "the base model")) from None
        raise ValueError(f"cannot read the UNet config of {base!r}: {' '.join(str(error).split())}") from None
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def from_official(
    checkpoint: str | Path,
    base,
    metrics: Sequence[str] | None = None,
    *,
    weight_name: str | None = None,
    revision: str | None = None,
    stats: str | Path | None = None,
    trust_pickle: bool = False,
    default_scale: float = 0.5,
    encoding_frequencies: int | None = None,
) -> IQAAdapter:
    """An official IQA-Adapter checkpoint as an :class:`IQAAdapter`: ``checkpoint`` is a local file, or a hub
    repository whose file ``weight_name`` (``sdxl/iqa_adapter_topiq_nr_laion_aes.bin``) it is, at ``revision``.
    ``base`` is a UNet, a pipeline, a model folder or hub id, or ``sd15`` / ``sdxl``. ``metrics`` are named in
    the checkpoint's feature order; without them they are read from the file name
    (:func:`metrics_from_file_name`). Statistics come from ``stats`` (a table in the layout of
    ``CC3M_stats.csv``), by default the shipped CC3M table the official adapters were trained with."""
    from .architectures import BASE_MODEL_IDS
    from .hub import download_file, is_local
    from .stats import cc3m_stats, load_stats_table

    table = load_stats_table(stats) if stats else cc3m_stats()
    file_name = Path(weight_name or checkpoint)
    names = list(metrics) if metrics else metrics_from_file_name(file_name, list(table))
    if not names:
        raise ValueError(
            f"cannot tell the metrics from the file name {file_name.name!r}: give them in training "
            f"order with --metrics (metrics=); known: {', '.join(sorted(table))}"
        )
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(
            f"no statistics for {unknown} in {stats or 'the shipped CC3M table'}; it has: {', '.join(sorted(table))}"
        )
    from_hub = weight_name is not None and not is_local(checkpoint)
    if from_hub:
        path = download_file(str(checkpoint), weight_name, what="the official checkpoint", revision=revision)
    else:
        path = existing_checkpoint(Path(checkpoint) / (weight_name or ""))  # before the base model is read
    base_model = BASE_MODEL_IDS.get(base, base) if isinstance(base, str) else None
    unet = load_unet_structure(base) if isinstance(base, str) else getattr(base, "unet", base)
    adapter = convert_official(
        path,
        unet,
        [table[name] for name in names],
        trust_pickle=trust_pickle,
        base_model=base_model,
        default_scale=default_scale,
        encoding_frequencies=encoding_frequencies,
    )
    if from_hub:
        adapter.config.extra["converted_from"] = f"{checkpoint}/{weight_name}" + (f"@{revision}" if revision else "")
    return adapter
