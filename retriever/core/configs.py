"""Checks shared by the frozen config dataclasses: unknown keys in ``from_dict``, integer fields."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

__all__ = ["check_keys", "is_int"]


def check_keys(cls: type, d: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the keys of ``d`` that are not fields of the dataclass ``cls``."""
    known = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys are {known}")


def is_int(x) -> bool:
    """An integer (Python or numpy) that is not a bool: what integer config fields accept."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))
