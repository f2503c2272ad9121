"""The adapter's configuration, saved as ``config.json`` beside ``adapter.safetensors``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .io_utils import read_json, reject_unknown_fields
from .stats import MetricStats

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "adapter.safetensors"
FORMAT_VERSION = 1
PROJECTIONS = ("linear", "mlp")
TRAIN_SCALE = 1.0
"""The adapter scale of training, as the official code (its attention processor's default)."""
LEGACY_TRAIN_SCALE = 0.5
"""The scale this project trained at before configs recorded it (the inference default)."""
CONDITIONS = ("scores", "reference")


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention layer of the base UNet that gets decoupled quality K/V."""

    name: str  # module path in the UNet, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    hidden_size: int  # output width of the layer's to_k / to_v


@dataclass
class IQAAdapterConfig:
    """Everything needed to rebuild an adapter and to turn quality targets into its input.

    With ``condition="scores"`` the condition fed to the projection is the vector of z-scores of ``metrics``
    (in this order); with ``condition="reference"`` it is the standardised feature vector of a reference
    image (``reference``: the metric, its layers and the feature width; see :mod:`iqa_adapter.reference`).
    Either is optionally followed by a constant 1.0 flag (``flag_feature``), then optionally expanded with
    the sinusoidal encoding gamma(x) of paper section 20 (``encoding_frequencies`` = L > 0). A dropped
    condition (classifier-free guidance, training drops) is the all-zero feature vector.

    ``train_scale`` is the adapter scale lambda the adapter was trained at (1.0, as the official code);
    ``default_scale`` the one generation uses unless told (0.5, the paper's). A config written before the train
    scale was recorded was trained at 0.5 (:data:`LEGACY_TRAIN_SCALE`).
    """

    cross_attention_dim: int
    layers: list[CrossAttentionLayer]
    metrics: list[MetricStats]
    num_tokens: int = 2
    projection: str = "linear"
    mlp_hidden_dim: int = 128
    encoding_frequencies: int = 0
    flag_feature: bool = True
    default_scale: float = 0.5
    train_scale: float = TRAIN_SCALE  # the scale the adapter was trained at (LEGACY_TRAIN_SCALE when not recorded)
    default_targets: dict = field(default_factory=dict)  # metric -> target used when a call names none
    base_model: str | None = None
    condition: str = "scores"
    reference: dict | None = None  # {"metric": registry name, "layers": [...], "feature_dim": F}
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {self.num_tokens}")
        if self.encoding_frequencies < 0:
            raise ValueError(f"encoding_frequencies must be >= 0, got {self.encoding_frequencies}")
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {self.condition!r}")
        if self.condition == "scores" and not self.metrics:
            raise ValueError("a score-conditioned adapter needs at least one metric")
        if self.condition == "reference" and not (
            self.reference and {"metric", "layers", "feature_dim"} <= set(self.reference)
        ):
            raise ValueError("a reference-conditioned adapter needs reference = {metric, layers, feature_dim}")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names must be unique, got {names}")

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.metrics]

    @property
    def condition_dim(self) -> int:
        """Length of the raw condition: one z-score per metric, or the reference feature width."""
        return int(self.reference["feature_dim"]) if self.condition == "reference" else len(self.metrics)

    @property
    def num_inputs(self) -> int:
        """Length of the condition before encoding, plus the flag."""
        return self.condition_dim + int(self.flag_feature)

    @property
    def feature_dim(self) -> int:
        """Width of the projection's input, after the optional sinusoidal encoding."""
        return self.num_inputs * (1 + 2 * self.encoding_frequencies)

    def describe_base_model(self, directory: str | Path | None = None) -> str:
        """The base model the adapter was trained for; a path relative to the adapter's folder (as in adapters
        shipped beside their base model, ``../base``) is shown with where it points."""
        name = self.base_model
        if name is None:
            return "unknown"
        if directory is not None and name.startswith(".") and (Path(directory) / name).exists():
            return f"{name} (= {(Path(directory) / name).resolve()})"
        return name

    def to_dict(self) -> dict:
        data = asdict(self)
        data["metrics"] = [m.to_dict() for m in self.metrics]
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "adapter config") -> IQAAdapterConfig:
        """The config saved as ``data``; unknown or missing keys raise a ValueError naming ``source``."""
        if not isinstance(data, dict):
            raise ValueError(f"{source} must hold a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"adapter format version {version} is newer than this library supports "
                f"({FORMAT_VERSION}); upgrade iqa-adapter"
            )
        reject_unknown_fields(cls, data, source)
        data.setdefault("train_scale", LEGACY_TRAIN_SCALE)
        missing = sorted({"cross_attention_dim", "layers", "metrics"} - set(data))
        if missing:
            raise ValueError(f"{source} lacks the keys {', '.join(missing)}; save the adapter again")
        try:
            data["layers"] = [CrossAttentionLayer(**layer) for layer in data["layers"]]
            data["metrics"] = [MetricStats.from_dict(m) for m in data["metrics"]]
        except (TypeError, KeyError, AttributeError) as error:
            raise ValueError(
                f"{source} has a malformed layer or metric entry ({error}); save the adapter again"
            ) from None
        return cls(**data)

    def save_to_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> IQAAdapterConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        return cls.from_dict(read_json(path, "adapter config"), source=f"adapter config {path}")
