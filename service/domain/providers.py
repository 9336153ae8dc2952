"""OpenRouter's provider preferences: where a request may be routed, in the domain's terms.

A ``ProviderPreferences`` is what a caller asks for, what a policy allows, and what the two
merge into (``service.domain.policy``); the upstream client sends the merged one as the
``provider`` object. ``None`` (or an empty tuple for lists) means "not set": OpenRouter's
default applies.

Provider slugs match as OpenRouter matches them: a base slug (``google-vertex``) covers every
variant and region of that provider (``google-vertex/us-east5``); a full slug
(``deepinfra/turbo``) names one endpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from decimal import Decimal
from enum import StrEnum

from service.errors import FieldViolation

MAX_PROVIDERS = 32
"""Entries of one provider list (order, only, ignore); OpenRouter has about seventy."""
MAX_SLUG_CHARS = 64
PROVIDER_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}(/[a-z0-9][a-z0-9._-]{0,63})?$")
MILLION = Decimal(1_000_000)


class ProviderSort(StrEnum):
    PRICE = "price"
    THROUGHPUT = "throughput"
    LATENCY = "latency"


class DataCollection(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Quantization(StrEnum):
    """OpenRouter's quantization names (OAS ``Quantization``)."""

    INT4 = "int4"
    INT8 = "int8"
    FP4 = "fp4"
    MXFP4 = "mxfp4"
    NVFP4 = "nvfp4"
    FP6 = "fp6"
    FP8 = "fp8"
    MXFP8 = "mxfp8"
    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class MaxPrice:
    """Hard price ceilings, in OpenRouter's units: USD per million tokens for ``prompt``,
    ``completion`` and ``audio``, USD per image for ``image``, USD per request for
    ``request``. ``None``: no ceiling of that kind."""

    prompt: Decimal | None = None
    completion: Decimal | None = None
    image: Decimal | None = None
    audio: Decimal | None = None
    request: Decimal | None = None

    def is_empty(self) -> bool:
        # Once per candidate model of every call: the shared empty one is answered at once.
        return self is NO_MAX_PRICE or all(getattr(self, kind) is None for kind in MAX_PRICE_KINDS)

    def per_token(self, kind: str) -> Decimal | None:
        """A per-million ceiling as USD per token (the catalog's unit)."""
        value: Decimal | None = getattr(self, kind)
        return None if value is None else value / MILLION


MAX_PRICE_KINDS = tuple(f.name for f in fields(MaxPrice))
NO_MAX_PRICE = MaxPrice()
PER_MILLION_KINDS = frozenset({"prompt", "completion", "audio"})


@dataclass(frozen=True, slots=True)
class ProviderPreferences:
    """OpenRouter's ``provider`` object; every field optional."""

    order: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    """``None``: any provider; a tuple: only these (never empty: that would route nowhere)."""
    ignore: tuple[str, ...] = ()
    allow_fallbacks: bool | None = None
    sort: ProviderSort | None = None
    quantizations: tuple[Quantization, ...] | None = None
    max_price: MaxPrice = NO_MAX_PRICE
    require_parameters: bool | None = None
    data_collection: DataCollection | None = None
    zdr: bool | None = None

    def is_empty(self) -> bool:
        return self == _EMPTY


_EMPTY = ProviderPreferences()


def slug_matches(pattern: str, slug: str) -> bool:
    """Whether a preference slug covers a provider slug: equal, or a base slug covering one
    of its variants (``google-vertex`` covers ``google-vertex/us-east5``, not the reverse)."""
    if pattern == slug:
        return True
    return "/" not in pattern and slug.startswith(pattern + "/")


def covered(slug: str, patterns: tuple[str, ...]) -> bool:
    return any(slug_matches(pattern, slug) for pattern in patterns)


# What OpenRouter reports as an answer's ``provider`` is a display name, while preferences
# use slugs. Most slugs are the name lower-cased with spaces as dashes ("Google AI Studio" ->
# google-ai-studio, "Amazon Bedrock" -> amazon-bedrock, "xAI" -> xai); these are the known
# exceptions ("Google" is how answers served by Vertex AI name their provider).
_DISPLAY_SLUGS = {
    "google": "google-vertex",
    "moonshot ai": "moonshotai",
}


def provider_slug(display_name: str) -> str:
    """The slug of a provider as an answer names it (``"Google AI Studio"`` ->
    ``google-ai-studio``); a slug is returned as it is."""
    lowered = display_name.strip().lower()
    known = _DISPLAY_SLUGS.get(lowered)
    if known is not None:
        return known
    return re.sub(r"[^a-z0-9./]+", "-", lowered).strip("-")


MAX_PRICE_CEILING = Decimal(1_000_000)
"""No price OpenRouter lists comes near a million dollars per unit: larger is a mistake."""


def preference_violations(prefs: ProviderPreferences) -> list[FieldViolation]:
    """What is malformed in a caller's preferences (before any policy looks at them)."""
    violations: list[FieldViolation] = []
    for list_name in ("order", "only", "ignore"):
        slugs: tuple[str, ...] = getattr(prefs, list_name) or ()
        where = f"provider.{list_name}"
        if len(slugs) > MAX_PROVIDERS:
            violations.append(FieldViolation(where, f"at most {MAX_PROVIDERS} providers"))
            continue
        for i, slug in enumerate(slugs):
            if not PROVIDER_SLUG.match(slug):
                violations.append(
                    FieldViolation(
                        f"{where}[{i}]",
                        "must be a provider slug such as 'openai' or 'deepinfra/turbo'",
                    )
                )
    for kind in MAX_PRICE_KINDS:
        value: Decimal | None = getattr(prefs.max_price, kind)
        if value is not None and not (value.is_finite() and 0 <= value <= MAX_PRICE_CEILING):
            violations.append(
                FieldViolation(
                    f"provider.max_price.{kind}",
                    f"must be a decimal from 0 to {MAX_PRICE_CEILING}",
                )
            )
    return violations
