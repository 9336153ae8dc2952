"""Lenient readers of JSON values: the type asked for, or its empty value.

Real traffic varies (``content`` ``''`` or ``null``, counts as floats, prices as strings); these
turn whatever came into the one type the caller needs without raising.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def as_str(value: object) -> str:
    return value if isinstance(value, str) else ""


def as_int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


def as_float_or_none(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def as_dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}
