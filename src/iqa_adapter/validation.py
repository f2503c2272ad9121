"""Checks of numeric settings, shared by the Python API and the command line.

Each check returns the value or raises a ValueError that names the setting, the valid range and the value
given. :func:`cli_type` turns a check into an ``argparse`` type, so that a command line option gets the same
message (``argument --steps: must be an integer >= 1, got -1``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real

MAX_SEED = 2**63 - 1


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _describe_range(minimum: float | None, maximum: float | None, open_minimum: bool) -> str:
    low = None if minimum is None else f"{'>' if open_minimum else '>='} {_number(minimum)}"
    high = None if maximum is None else f"<= {_number(maximum)}"
    return " and ".join(part for part in (low, high) if part)


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within [minimum, maximum] (either bound optional)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {_describe_range(minimum, maximum, False)}, got {value}")
    return int(value)


def check_number(
    name: str, value, minimum: float | None = None, maximum: float | None = None, *, open_minimum: bool = False
) -> float:
    """``value`` as a finite float within the bounds (``open_minimum``: strictly above ``minimum``)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    below = minimum is not None and (value <= minimum if open_minimum else value < minimum)
    if below or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be a number {_describe_range(minimum, maximum, open_minimum)}, got {value:g}")
    return float(value)


def check_seed(name: str, value) -> int:
    """A seed for ``torch.Generator.manual_seed``: an integer in [0, 2**63 - 1]."""
    return check_int(name, value, 0, MAX_SEED)


def check_scale(name: str, scale) -> float | dict:
    """An adapter scale: a finite number >= 0, or diffusers' per-block dict whose leaves are such numbers,
    e.g. ``{"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}}``."""
    if isinstance(scale, Mapping):
        unknown = sorted(set(map(str, scale)) - {"down", "mid", "up"})
        if unknown:
            raise ValueError(
                f"{name}: unknown UNet part(s) {unknown}; a per-block scale names 'down', 'mid' and 'up', "
                'e.g. {"up": {"block_0": [0.0, 1.0, 0.0]}}'
            )
        for part, value in scale.items():
            _check_scale_leaves(f"{name}[{part!r}]", value)
        return dict(scale)
    return check_number(name, scale, 0.0)


def _check_scale_leaves(name: str, value) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if not str(key).startswith("block_"):
                raise ValueError(f"{name}: blocks are named block_0, block_1, ..., got {key!r}")
            _check_scale_leaves(f"{name}[{key!r}]", inner)
    elif isinstance(value, (list, tuple)):
        for index, inner in enumerate(value):
            check_number(f"{name}[{index}]", inner, 0.0)
    else:
        check_number(name, value, 0.0)


def cli_type(check: Callable, *bounds, parse: Callable = float, **options) -> Callable[[str], object]:
    """An argparse ``type``: parse the text (``int``, ``float``, ...), then apply ``check`` with ``bounds``.

    The error message is the check's, without the setting's name (argparse puts ``argument --name:`` first).
    """

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            kind = "an integer" if parse is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        try:
            return check("value", value, *bounds, **options)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix("value ")) from None

    return convert


# argparse types
positive_int = cli_type(check_int, 1, parse=int)
non_negative_int = cli_type(check_int, 0, parse=int)
non_negative_number = cli_type(check_number, 0.0)
positive_number = cli_type(check_number, 0.0, open_minimum=True)
finite_number = cli_type(check_number)
fraction = cli_type(check_number, 0.0, 1.0)
seed = cli_type(check_seed, parse=int)
