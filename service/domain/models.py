"""What the gateway knows about a model: context length, prices, capabilities, modalities."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from typing import Any

from service.domain.completion import Modality
from service.domain.providers import MaxPrice


@dataclass(frozen=True, slots=True)
class ModelPricing:
    """Prices in USD, exact decimals as OpenRouter sends them.

    ``prompt``/``completion`` are per token, ``request`` per request, ``image`` per input
    image, ``image_output`` per generated image, ``image_token`` per generated image token,
    ``audio`` per input audio token and ``audio_output`` per generated audio token; absent,
    they are 0 (not charged). The kinds after them are ``None`` when the catalog does not list
    them, which means "does not apply" rather than "free": ``audio_cache`` per cached audio
    token, ``web_search`` per native search, ``internal_reasoning`` per reasoning token,
    ``cache_read`` per prompt token read from the cache, ``cache_write`` /
    ``cache_write_1h`` per prompt token written to it (5-minute / 1-hour lifetime).

    ``variable`` marks a router (``openrouter/auto``, listed as ``"-1"``): the call is billed
    as the model it routes to, so no price is known before; the amounts are then 0, and
    nothing may treat them as free.
    """

    prompt: Decimal = Decimal(0)
    completion: Decimal = Decimal(0)
    request: Decimal = Decimal(0)
    image: Decimal = Decimal(0)
    image_output: Decimal = Decimal(0)
    image_token: Decimal = Decimal(0)
    audio: Decimal = Decimal(0)
    audio_output: Decimal = Decimal(0)
    audio_cache: Decimal | None = None
    web_search: Decimal | None = None
    internal_reasoning: Decimal | None = None
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    variable: bool = False

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return self.prompt * prompt_tokens + self.completion * completion_tokens + self.request

    def capped(self, ceiling: MaxPrice) -> ModelPricing:
        """These prices lowered to ``ceiling`` where it is lower: what a call can cost at
        most when OpenRouter routes it only to endpoints within the ceiling."""
        if ceiling.is_empty():
            return self
        return replace(
            self,
            prompt=_lower(self.prompt, ceiling.per_token("prompt")),
            completion=_lower(self.completion, ceiling.per_token("completion")),
            audio=_lower(self.audio, ceiling.per_token("audio")),
            image=_lower(self.image, ceiling.image),
            request=_lower(self.request, ceiling.request),
        )


def _lower(price: Decimal, ceiling: Decimal | None) -> Decimal:
    return price if ceiling is None else min(price, ceiling)


def dearest(prices: Iterable[ModelPricing]) -> ModelPricing:
    """The highest price of each kind over ``prices``: what no one of them exceeds."""
    values: dict[str, Any] = {}
    for pricing in prices:
        for name in _PRICE_KINDS:
            price = getattr(pricing, name)
            if price is not None and (values.get(name) is None or price > values[name]):
                values[name] = price
        values["variable"] = values.get("variable", False) or pricing.variable
    return ModelPricing(**values)


_PRICE_KINDS = tuple(f.name for f in fields(ModelPricing) if f.name != "variable")


TEXT_ONLY = frozenset({Modality.TEXT})
_SERVED_OUTPUTS = frozenset({Modality.TEXT, Modality.IMAGE, Modality.EMBEDDINGS})


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    name: str = ""
    context_length: int = 0
    max_completion_tokens: int | None = None
    pricing: ModelPricing = ModelPricing()
    supported_parameters: frozenset[str] = field(default_factory=frozenset)
    input_modalities: frozenset[Modality] | None = None
    """From ``architecture.input_modalities``; None when the catalog does not say, and then
    the gateway does not refuse parts on the model's behalf (OpenRouter will, if it must)."""
    output_modalities: frozenset[Modality] | None = None
    peak_pricing: ModelPricing | None = None
    """The highest price of each kind over the base prices and the conditional ones
    (OpenRouter's ``overrides``: long prompts, times of day); None when there are none."""

    @property
    def ceiling(self) -> ModelPricing:
        """What no call of this model is priced above (before the per-call kinds)."""
        return self.peak_pricing or self.pricing

    @property
    def supports_structured_outputs(self) -> bool:
        """``json_schema`` response formats are enforced natively."""
        return "structured_outputs" in self.supported_parameters

    @property
    def supports_response_format(self) -> bool:
        """At least ``json_object`` mode works."""
        return "response_format" in self.supported_parameters

    @property
    def supports_tools(self) -> bool:
        return "tools" in self.supported_parameters

    @property
    def supports_reasoning(self) -> bool:
        return bool({"reasoning", "include_reasoning"} & self.supported_parameters)

    @property
    def servable(self) -> bool:
        """Whether some RPC serves the model: it writes text, images or embeddings (or the
        catalog does not say). Speech, transcription and rerank models are not served."""
        outputs = self.output_modalities
        return outputs is None or bool(outputs & _SERVED_OUTPUTS)

    @property
    def makes_embeddings(self) -> bool:
        """An embedding model: served by Embed, never by the chat RPCs."""
        return self.output_modalities is not None and Modality.EMBEDDINGS in self.output_modalities

    def takes(self, modality: Modality) -> bool:
        """Whether the model reads ``modality`` (True when the catalog does not say)."""
        return self.input_modalities is None or modality in self.input_modalities

    def lists(self, inputs: frozenset[Modality], outputs: frozenset[Modality]) -> bool:
        """Whether the catalog says the model reads every one of ``inputs`` and writes every
        one of ``outputs`` (a filter: where it says nothing, no)."""
        if inputs and (self.input_modalities is None or not inputs <= self.input_modalities):
            return False
        return not outputs or (
            self.output_modalities is not None and outputs <= self.output_modalities
        )

    def makes(self, modality: Modality) -> bool:
        """Whether the model writes ``modality`` (True when the catalog does not say)."""
        return self.output_modalities is None or modality in self.output_modalities
