"""The settings of a training run, saved as ``train_config.json`` in its output folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..config import PROJECTIONS
from .data import CROPS

CONFIG_FILE = "train_config.json"
LR_SCHEDULES = ("constant", "cosine", "linear")
MIXED_PRECISION = ("no", "fp16", "bf16")
STATS_SOURCES = ("data", "init")
# Settings that may change when a run is resumed: they do not change what the finished steps computed.
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "checkpoint_every",
        "checkpoints_total_limit",
        "log_every",
        "validation_every",
        "validation_prompts",
        "validation_steps",
        "num_workers",
        "resume",
        "progress",
    }
)


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults follow the paper (section 9) and REFERENCE.md.

    Paper: AdamW (0.9, 0.999), weight decay 1e-2, lr 1e-4 (CC3M at 512 px) then 1e-5 for the second
    stage, bf16, 2 tokens, linear projection. Official code: condition drops from one uniform draw, quality
    1 %, text 5 %, both 1 %; the adapter trained at scale 1.0; no gradient clipping; latents from a float32
    VAE; no schedule, EMA, caching or resume (all optional here).
    """

    base: str
    data: str
    scores: str | None
    metrics: list[str]
    out: str
    # a reference-conditioned adapter: "<metric>:<layers>" (iqa_adapter.reference); then no scores or metrics
    reference_features: str | None = None
    # adapter (a new one; with init_adapter, its own architecture and, by default, its statistics are kept)
    num_tokens: int = 2
    projection: str = "linear"
    encoding_frequencies: int = 0
    flag_feature: bool = True
    init_adapter: str | None = None
    stats_from: str = "data"  # "data": this dataset's statistics; "init": keep the init adapter's
    default_target: str | None = None  # e.g. "p50": the target of every metric a generate call leaves out
    # data
    resolution: int = 512
    crop: str = "center"
    flip: bool = False
    cache_dir: str | None = None
    cache_dtype: str = "float16"
    num_workers: int = 2
    # optimisation
    batch_size: int = 16  # per process
    gradient_accumulation: int = 1
    max_steps: int = 1000
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float | None = None  # the official code does not clip
    train_scale: float = 1.0  # adapter scale while training (the official code's; inference uses default_scale)
    ema_decay: float | None = None
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    drop_quality: float = 0.01
    drop_text: float = 0.05
    drop_both: float = 0.01
    seed: int = 0
    # checkpoints and visibility
    checkpoint_every: int = 500
    checkpoints_total_limit: int | None = 3
    resume: str | None = None  # "latest" or a checkpoint folder
    log_every: int = 10
    validation_every: int = 0
    validation_prompts: list[str] = field(default_factory=list)
    validation_steps: int = 20
    validation_guidance: float = 7.5
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "projection": (self.projection, PROJECTIONS),
            "crop": (self.crop, CROPS),
            "lr_schedule": (self.lr_schedule, LR_SCHEDULES),
            "mixed_precision": (self.mixed_precision, MIXED_PRECISION),
            "stats_from": (self.stats_from, STATS_SOURCES),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.reference_features is None and (not self.metrics or self.scores is None):
            raise ValueError(
                "give the scores and at least one metric to condition on (--scores DIR --metrics "
                "topiq_nr,laion_aes), or --reference-features for a reference-based adapter"
            )
        if self.reference_features is not None and self.metrics:
            raise ValueError("a reference-based adapter is conditioned on image features, not on --metrics")
        for name in ("batch_size", "gradient_accumulation", "max_steps", "resolution", "num_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        drops = (self.drop_quality, self.drop_text, self.drop_both)
        if min(drops) < 0 or sum(drops) > 1:
            raise ValueError(f"condition drop rates must be >= 0 and sum to at most 1, got {drops}")
        if self.stats_from == "init" and self.init_adapter is None:
            raise ValueError("stats_from='init' keeps the statistics of --init-adapter, which is not given")
        if not self.train_scale > 0:
            raise ValueError(f"train_scale must be a number > 0, got {self.train_scale}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}")

    def to_dict(self) -> dict:
        return asdict(self)

    def recipe(self, processes: int, images: int) -> dict:
        """What a model card tells of this run (recorded in the adapter's config as ``extra["training"]``)."""

        def shown(location: str) -> str:  # a local folder by its name only: a card must not leak home paths
            return Path(location).name if Path(location).is_absolute() else location

        recipe = {
            "base": shown(self.base),
            "data": shown(self.data),
            "images": images,
            "steps": self.max_steps,
            "batch_size": self.batch_size * self.gradient_accumulation * processes,
            "resolution": self.resolution,
            "learning_rate": self.learning_rate,
            "lr_schedule": self.lr_schedule,
            "train_scale": self.train_scale,
            "mixed_precision": self.mixed_precision,
            "drop_rates": {"quality": self.drop_quality, "text": self.drop_text, "both": self.drop_both},
            "max_grad_norm": self.max_grad_norm,
            "ema_decay": self.ema_decay,
            "seed": self.seed,
        }
        if self.reference_features is not None:
            recipe["reference_features"] = self.reference_features
        return recipe

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def save(self, out_dir: str | Path) -> None:
        from ..io_utils import write_json

        write_json(Path(out_dir) / CONFIG_FILE, self.to_dict())

    def changes_from(self, saved: TrainConfig) -> list[str]:
        """Settings that differ from a saved run's and would change its results (resume refuses them); paths
        are compared resolved the same way on both sides (a run recorded with a relative path resumes)."""
        mine, theirs = self.to_dict(), saved.to_dict()
        for name, resolve in PATH_SETTINGS.items():
            mine[name], theirs[name] = resolve(mine[name]), resolve(theirs[name])
        return [
            f"{name}: {theirs[name]!r} -> {mine[name]!r}"
            for name in mine
            if name not in RESUMABLE_CHANGES and mine[name] != theirs[name]
        ]


def output_path(path: str | None) -> str | None:
    """A folder the run writes (``out``, ``cache_dir``): always local, recorded absolute."""
    return None if path is None else str(Path(path).expanduser().resolve())


def input_path(path: str | None) -> str | None:
    """A model or data location: absolute when it is a local path, unchanged when it is a hub id or a pattern
    (``shards/{00000..00009}.tar``)."""
    if path is None or not Path(path).expanduser().exists():
        return path
    return str(Path(path).expanduser().resolve())


PATH_SETTINGS = {
    "base": input_path,
    "data": input_path,
    "scores": input_path,
    "init_adapter": input_path,
    "out": output_path,
    "cache_dir": output_path,
}
"""Settings that hold paths, and how each is resolved before two runs' settings are compared."""


def load_train_config(out_dir: str | Path) -> TrainConfig | None:
    """The settings saved in a run's output folder, if any."""
    path = Path(out_dir) / CONFIG_FILE
    return TrainConfig.from_dict(json.loads(path.read_text())) if path.is_file() else None
