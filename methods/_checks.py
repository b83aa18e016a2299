"""Validators for ``Method._check``: each raises a ValueError that names the valid range."""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Iterable


def check_int(method: str, hp: dict[str, Any], key: str, lo: int, hi: int | None = None, why: str = "") -> None:
    """``hp[key]`` must be an integer in [lo, hi] (no upper bound when ``hi`` is None); ``why``
    says where the bound comes from (e.g. the backbone's width)."""
    value = hp[key]
    if isinstance(value, bool) or not isinstance(value, Integral) or value < lo or (hi is not None and value > hi):
        valid = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{method}: {key} must be an integer {valid}, got {value!r}{f' ({why})' if why else ''}")


def check_float(method: str, hp: dict[str, Any], key: str, lo: float, hi: float = math.inf,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """``hp[key]`` must be a finite number between ``lo`` and ``hi`` (bounds excluded when open)."""
    value = hp[key]
    ok = (not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
          and (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi))
    if not ok:
        if lo == -math.inf and hi == math.inf:
            valid = "that is finite"
        elif hi == math.inf:
            valid = f"{'>' if lo_open else '>='} {lo}"
        else:
            valid = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{method}: {key} must be a number {valid}, got {value!r}")


def check_choice(method: str, hp: dict[str, Any], key: str, choices: Iterable[str]) -> None:
    """``hp[key]`` must be one of ``choices``."""
    choices = tuple(choices)
    if hp[key] not in choices:
        raise ValueError(f"{method}: {key} must be one of {', '.join(map(repr, choices))}; got {hp[key]!r}")
