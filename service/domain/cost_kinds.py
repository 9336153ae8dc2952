"""What a call's cost was spent on: its recorded cost split by kind, exactly.

OpenRouter bills one total per call (``usage.cost``). On its own key it also reports the
provider's part (``cost_details.upstream_inference_cost``), split into prompt and completion;
what the total holds beyond it is OpenRouter's fee for the tools it ran (web search, PDF
parsing). The kinds within the prompt side (text, cache reads and writes, images, audio) and
the completion side (text, reasoning, images, audio) are not reported: they come from the
served model's catalog prices times the units the answer counted.

The catalog lists a model's prices, not the serving endpoint's (a provider may charge less),
so the catalog amounts are *weights*: each reported amount is shared over its kinds in their
proportion, and the parts of a row always sum to its recorded cost exactly. What no price
accounts for - a cost with no priced unit behind it (a model missing from the catalog, a
router's unknown price), a fee beyond inference with neither a search nor a file to explain
it, the provider's part beyond its prompt and completion with no request price - is
``OTHER``: kept visible as unattributed rather than guessed onto a kind.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from service.domain.completion import Usage
from service.domain.models import ModelPricing
from service.domain.server_tools import WebSearch


class CostKind(StrEnum):
    """What part of a call's cost paid for; the values are the ledger's column names' stems."""

    PROMPT = "prompt"
    """Prompt tokens read fresh (text, and video, which providers price as prompt tokens)."""
    CACHE_READ = "cache_read"
    CACHE_WRITE = "cache_write"
    IMAGE_INPUT = "image_input"
    """Input images: the per-image price and their prompt tokens."""
    AUDIO = "audio"
    """Audio tokens, read and generated."""
    COMPLETION = "completion"
    """Generated text (and tool calls)."""
    REASONING = "reasoning"
    IMAGE_OUTPUT = "image_output"
    """Generated images: the per-image price or their image tokens."""
    WEB_SEARCH = "web_search"
    REQUEST = "request"
    """A model's fixed price per request."""
    EMBEDDINGS = "embeddings"
    """The input tokens of an ``Embed`` call."""
    OTHER = "other"
    """What no catalog price accounts for (see the module's docstring)."""
    FILE_PARSER = "file_parser"
    """OpenRouter's file-parser fees (PDF pages read with an OCR engine). After ``OTHER``
    because it came later: the order is the contract's numbering."""


COST_KINDS = tuple(CostKind)
"""Every kind, in the order the ledger stores and GetUsage reports them."""


@dataclass(frozen=True, slots=True)
class CostSplit:
    """A cost by kind; kinds that cost nothing are left out."""

    parts: tuple[tuple[CostKind, Decimal], ...] = ()

    @classmethod
    def of(cls, amounts: Mapping[CostKind, Decimal]) -> CostSplit:
        return cls(tuple((kind, v) for kind in COST_KINDS if (v := amounts.get(kind))))

    def get(self, kind: CostKind) -> Decimal:
        return dict(self.parts).get(kind, Decimal(0))

    @property
    def total(self) -> Decimal:
        return _sum(amount for _, amount in self.parts)

    def __add__(self, other: CostSplit) -> CostSplit:
        amounts = dict(self.parts)
        for kind, amount in other.parts:
            amounts[kind] = _CONTEXT.add(amounts.get(kind, Decimal(0)), amount)
        return CostSplit.of(amounts)


@dataclass(frozen=True, slots=True)
class CostUnits:
    """What a call counted, beyond its ``Usage``: the parts the caller sent and the images
    the answer carried, and whether it was an ``Embed`` call."""

    images_in: int = 0
    images_out: int = 0
    files_in: int = 0
    """File parts (documents) the caller sent, which OpenRouter may have parsed for a fee."""
    embeddings: bool = False


# Shares are cut at a femto-dollar (1e-15 USD: the cheapest token listed is ~1e-8), far below
# anything billed; the rounding's remainder goes to the share with the most weight, so the
# parts sum to the amount exactly whatever its digits. The arithmetic runs with room to
# spare, never at the ambient context's 28 digits.
_QUANTUM = Decimal("1e-15")
_CONTEXT = decimal.Context(prec=60)
_ZERO = Decimal(0)

_Weights = list[tuple[CostKind, Decimal]]


def split_cost(
    cost: Decimal | None,
    usage: Usage | None,
    pricing: ModelPricing | None,
    units: CostUnits = CostUnits(),
) -> CostSplit | None:
    """``cost`` by kind (see the module's docstring); None when the cost is unknown."""
    if cost is None:
        return None
    parts: dict[CostKind, Decimal] = {}
    if usage is None or pricing is None or pricing.variable:
        _allocate(cost, (), parts)
        return CostSplit.of(parts)
    prompt, completion, request = _weights(usage, pricing, units)
    searches = usage.web_search_requests
    search: _Weights = (
        [(CostKind.WEB_SEARCH, searches * WebSearch().search_price(pricing.web_search))]
        if searches
        else []
    )
    upstream = _reported(usage.upstream_cost_usd)
    if upstream is None or usage.byok or upstream > cost:
        # One amount to share over every kind: with BYOK the cost is OpenRouter's fee alone,
        # which follows what the call used; without cost_details nothing is known of sides.
        _allocate(cost, prompt + completion + request + search, parts)
        return CostSplit.of(parts)
    _tool_fees(_CONTEXT.subtract(cost, upstream), search, units, parts)
    prompt_cost = _reported(usage.upstream_prompt_cost_usd)
    completion_cost = _reported(usage.upstream_completion_cost_usd)
    if prompt_cost is None or completion_cost is None or prompt_cost + completion_cost > upstream:
        _allocate(upstream, prompt + completion + request, parts)
    else:
        _allocate(prompt_cost, prompt, parts)
        _allocate(completion_cost, completion, parts)
        rest = _CONTEXT.subtract(_CONTEXT.subtract(upstream, prompt_cost), completion_cost)
        _allocate(rest, request, parts)
    return CostSplit.of(parts)


def _tool_fees(
    fee: Decimal, search: _Weights, units: CostUnits, parts: dict[CostKind, Decimal]
) -> None:
    """OpenRouter's fees beyond the provider's cost: its searches' and its PDF parsing's.
    With both, the searches get their price at most (the chat usage counts searches, not
    pages) and the parsing the rest."""
    if not fee:
        return
    if not units.files_in:
        _allocate(fee, search, parts)
        return
    searched = min(fee, _sum(weight for _, weight in search))
    _allocate(searched, search, parts)
    _allocate(_CONTEXT.subtract(fee, searched), [(CostKind.FILE_PARSER, fee)], parts)


def _weights(usage: Usage, pricing: ModelPricing, units: CostUnits) -> tuple[_Weights, ...]:
    """The catalog amounts of the prompt side, the completion side and the request."""
    audio_in = usage.prompt_audio_tokens
    image_in = usage.prompt_image_tokens
    fresh = max(
        0,
        usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens - image_in - audio_in,
    )
    read_kind = CostKind.EMBEDDINGS if units.embeddings else CostKind.PROMPT
    prompt: _Weights = [
        (read_kind, fresh * pricing.prompt),
        (CostKind.CACHE_READ, usage.cached_tokens * _or(pricing.cache_read, pricing.prompt)),
        (CostKind.CACHE_WRITE, usage.cache_write_tokens * _or(pricing.cache_write, pricing.prompt)),
        (CostKind.IMAGE_INPUT, units.images_in * pricing.image + image_in * pricing.prompt),
        (CostKind.AUDIO, audio_in * (pricing.audio or pricing.prompt)),
    ]
    reasoning = usage.reasoning_tokens
    image_out = usage.completion_image_tokens
    audio_out = usage.completion_audio_tokens
    text = max(0, usage.completion_tokens - reasoning - image_out - audio_out)
    if pricing.image_output:
        # Priced per image, an image's tokens are not billed again.
        images = units.images_out * pricing.image_output
    else:
        images = image_out * (pricing.image_token or pricing.completion)
    completion: _Weights = [
        (CostKind.COMPLETION, text * pricing.completion),
        (CostKind.REASONING, reasoning * _or(pricing.internal_reasoning, pricing.completion)),
        (CostKind.IMAGE_OUTPUT, images),
        (CostKind.AUDIO, audio_out * (pricing.audio_output or pricing.completion)),
    ]
    return prompt, completion, [(CostKind.REQUEST, pricing.request)]


def _or(price: Decimal | None, default: Decimal) -> Decimal:
    return default if price is None else price


def _reported(value: float | None) -> Decimal | None:
    """An amount as OpenRouter wrote it (the float's shortest repr); None when unusable."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return Decimal(repr(value))


def _allocate(
    amount: Decimal, weights: Iterable[tuple[CostKind, Decimal]], parts: dict[CostKind, Decimal]
) -> None:
    """Add ``amount`` to ``parts``, shared over the kinds in proportion to their weights and
    summing to it exactly; all of it ``OTHER`` when nothing has weight."""
    if not amount:
        return
    live: dict[CostKind, Decimal] = {}
    for kind, weight in weights:
        if weight > 0:
            live[kind] = _CONTEXT.add(live.get(kind, _ZERO), weight)
    if not live:
        live = {CostKind.OTHER: amount}
    elif (whole := _sum(live.values())) != amount:
        # Billed off the listed prices: shares cut at the quantum, the rest to the heaviest.
        heaviest = max(live, key=live.__getitem__)
        shares = {
            kind: _CONTEXT.divide(_CONTEXT.multiply(amount, weight), whole).quantize(
                _QUANTUM, rounding=decimal.ROUND_DOWN, context=_CONTEXT
            )
            for kind, weight in live.items()
        }
        shares[heaviest] = _CONTEXT.add(
            shares[heaviest], _CONTEXT.subtract(amount, _sum(shares.values()))
        )
        live = shares
    for kind, share in live.items():
        parts[kind] = _CONTEXT.add(parts.get(kind, _ZERO), share)


def _sum(amounts: Iterable[Decimal]) -> Decimal:
    total = Decimal(0)
    for amount in amounts:
        total = _CONTEXT.add(total, amount)
    return total
