"""OpenRouter's ``pricing`` object of a ``/models`` entry -> ``ModelPricing``.

Every value is a decimal string in USD per unit. ``"-1"`` (router models such as
``openrouter/auto``) means the price is not known before the call: the entry is marked
``variable``, never read as a negative or a zero price. ``overrides`` are conditional prices
(prompts above ``min_prompt_tokens``, UTC time windows); the reservation needs the highest of
each kind, so they are folded into a peak pricing.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from service.domain.models import ModelPricing, dearest

# OpenRouter's key -> ModelPricing's field, for the kinds absent means "does not apply".
_OPTIONAL_KINDS = {
    "input_audio_cache": "audio_cache",
    "web_search": "web_search",
    "internal_reasoning": "internal_reasoning",
    "input_cache_read": "cache_read",
    "input_cache_write": "cache_write",
    "input_cache_write_1h": "cache_write_1h",
}
# The kinds absent means "not charged" (0).
_ZERO_KINDS = (
    "prompt",
    "completion",
    "request",
    "image",
    "image_output",
    "image_token",
    "audio",
    "audio_output",
)


def _price(value: object) -> Decimal | None:
    """A price, or None when unusable; "-1" (and any negative) is the caller's to spot."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        price = Decimal(value) if isinstance(value, str) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return price if price.is_finite() else None


def _pricing(raw: Mapping[str, Any], base: ModelPricing | None = None) -> ModelPricing:
    values: dict[str, Any] = {}
    variable = base.variable if base is not None else False
    for key in (*_ZERO_KINDS, *_OPTIONAL_KINDS):
        if key not in raw:
            continue
        price = _price(raw[key])
        name = _OPTIONAL_KINDS.get(key, key)
        if price is None:
            continue
        if price < 0:
            # A router's "-1": billed as the model it picks; 0 here, never negative.
            variable = True
            price = Decimal(0)
        values[name] = price
    if base is None:
        return ModelPricing(**values, variable=variable)
    merged = {name: getattr(base, name) for name in base.__dataclass_fields__}
    merged.update(values)
    merged["variable"] = variable
    return ModelPricing(**merged)


def parse_pricing(raw: object) -> tuple[ModelPricing, ModelPricing | None]:
    """The base pricing, and the peak over base and overrides (None without overrides)."""
    pricing = raw if isinstance(raw, dict) else {}
    base = _pricing(pricing)
    overrides = pricing.get("overrides")
    if not isinstance(overrides, list) or not overrides:
        return base, None
    # Absent keys of an override inherit the base price, as OpenRouter documents.
    tiers = [_pricing(o, base) for o in overrides if isinstance(o, dict)]
    return base, dearest([base, *tiers]) if tiers else None
