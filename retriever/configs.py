"""The check every frozen config dataclass's ``from_dict`` makes before building itself."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["check_keys"]


def check_keys(cls: type, d: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the keys of ``d`` that are not fields of the dataclass ``cls``."""
    known = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys are {known}")
