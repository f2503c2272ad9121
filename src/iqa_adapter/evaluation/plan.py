"""What an evaluation generates: conditions x prompts x seeds, one image each, in a fixed order.

A :class:`Condition` is one way of generating: the base model, or one adapter at a quality percentile, an
adapter scale and, optionally, negative quality guidance. :func:`plan_conditions` lists the paper's experiments
for one or several adapters against one set of base images:

* ``base``: the base model alone (generated once, whatever the number of adapters);
* ``<adapter>/p<P>``: every conditioning metric of the adapter at percentile P, at its default scale
  (the percentile sweep; p99 and p1 give RelGain);
* ``<adapter>/scale_<S>_p<P>``: the scale sweep at p99 and p1 (scale 0 is the base model, the default scale
  is the sweep's own condition, so neither is generated twice);
* ``<adapter>/negative_p99``: p99 with negative quality guidance;

and for an adapter that is only a row of the RelGain matrix (``relgain_only``), p1 and p99 alone.

:class:`EvaluationPlan` numbers the images condition-major, then prompt, then seed: item ``i`` is one image,
with a path under ``images/`` that depends only on its condition, prompt and seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..validation import check_int, check_number

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
BASE = "base"
HIGH, LOW = 99, 1


@dataclass(frozen=True)
class Condition:
    """One way of generating images. ``kind``: ``base``, ``percentile``, ``scale`` or ``negative``."""

    name: str
    kind: str
    adapter: str | None = None
    percentile: int | None = None
    scale: float = 0.0
    negative_quality: float | None = None

    @property
    def folder(self) -> str:
        """The folder of its images, below ``images/``."""
        return self.name


def plan_conditions(
    adapter_scales: dict[str, float],
    percentiles: Sequence[int] = PERCENTILES,
    scales: Sequence[float] = SCALES,
    negative_quality: float | None = 1.0,
    relgain_only: Collection[str] = (),
) -> list[Condition]:
    """The conditions of the paper's experiments for adapters ``{name: default scale}`` (see the module); the
    adapters in ``relgain_only`` get p1 and p99 only (a row of the RelGain matrix at a fraction of the cost)."""
    for percentile in percentiles:
        check_int("percentile", percentile, LOW, HIGH)
    for scale in scales:
        check_number("scale", scale, 0.0)
    if not {HIGH, LOW} <= set(percentiles):
        raise ValueError(
            f"the percentiles must include p{LOW} and p{HIGH} (RelGain compares them with the base "
            f"model), got {list(percentiles)}"
        )
    unknown = sorted(set(relgain_only) - set(adapter_scales))
    if unknown:
        raise ValueError(f"relgain-only adapters {unknown} are not among the adapters {list(adapter_scales)}")
    conditions = [Condition(BASE, "base")]
    for adapter, default_scale in adapter_scales.items():
        if adapter in relgain_only:
            conditions += [Condition(f"{adapter}/p{p}", "percentile", adapter, p, default_scale) for p in (LOW, HIGH)]
            continue
        if "/" in adapter or adapter == BASE:
            raise ValueError(
                f"adapter name {adapter!r}: names are folders of the report, without '/' and not "
                f"{BASE!r}; name it with --adapter NAME=FOLDER"
            )
        conditions += [Condition(f"{adapter}/p{p}", "percentile", adapter, p, default_scale) for p in percentiles]
        conditions += [
            Condition(f"{adapter}/scale_{scale:g}_p{p}", "scale", adapter, p, scale)
            for scale in scales
            for p in (HIGH, LOW)
            if scale not in (0.0, default_scale)
        ]
        if negative_quality is not None:
            conditions.append(
                Condition(f"{adapter}/negative_p{HIGH}", "negative", adapter, HIGH, default_scale, negative_quality)
            )
    return conditions


@dataclass(frozen=True)
class Item:
    """One image of the plan: its condition and prompt (indices into the plan) and its seed."""

    index: int
    condition: int
    prompt: int
    seed: int


@dataclass
class EvaluationPlan:
    """Conditions x prompts x seeds, numbered condition-major (see the module)."""

    conditions: list[Condition]
    prompts: list[str]
    seeds: list[int]
    settings: dict = field(default_factory=dict)  # sampling settings and models, part of the job's identity

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("an evaluation needs at least one prompt")
        if not self.seeds:
            raise ValueError("an evaluation needs at least one seed")
        names = [condition.name for condition in self.conditions]
        if len(set(names)) != len(names):
            raise ValueError(f"condition names must be unique, got {names}")

    def __len__(self) -> int:
        return len(self.conditions) * len(self.prompts) * len(self.seeds)

    @property
    def per_condition(self) -> int:
        """Images per condition: prompts x seeds."""
        return len(self.prompts) * len(self.seeds)

    def item(self, index: int) -> Item:
        condition, within = divmod(index, self.per_condition)
        prompt, seed = divmod(within, len(self.seeds))
        return Item(index, condition, prompt, self.seeds[seed])

    def condition_index(self, name: str) -> int:
        for index, condition in enumerate(self.conditions):
            if condition.name == name:
                return index
        raise KeyError(f"no condition {name!r} in this evaluation")

    def items_of(self, name: str) -> range:
        """The item indices of one condition, in prompt-then-seed order (paired across conditions)."""
        start = self.condition_index(name) * self.per_condition
        return range(start, start + self.per_condition)

    def image_path(self, item: Item) -> Path:
        """Path of an item's image, relative to the output folder."""
        return Path("images") / self.conditions[item.condition].folder / f"{item.prompt:05d}_s{item.seed}.png"

    def identity(self) -> dict:
        """What the images depend on, recorded in ``job.json``: a restart with another plan is refused."""
        prompts = hashlib.sha256(json.dumps(self.prompts).encode()).hexdigest()
        return {
            "conditions": [asdict(condition) for condition in self.conditions],
            "prompts_sha256": prompts,
            "num_prompts": len(self.prompts),
            "seeds": list(self.seeds),
            **self.settings,
        }
