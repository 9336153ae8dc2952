"""The simulated model catalog: ids, display providers, prices, parameters and modalities."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from .media import PromptMedia

# Normalized finish_reason -> what the provider itself reports; real responses carry both.
_OPENAI_NATIVE = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "error": "error"}
_ANTHROPIC_NATIVE = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "error": "error",
}
_GOOGLE_NATIVE = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "error": "ERROR"}
_SIM_NATIVE = {
    "stop": "completed",
    "length": "length",
    "tool_calls": "tool_calls",
    "error": "error",
}

_REASONING = frozenset({"reasoning", "include_reasoning"})

_SAMPLING = frozenset(
    {"max_tokens", "temperature", "top_p", "stop", "seed", "frequency_penalty", "presence_penalty"}
)

# Parameter names OpenRouter checks against `supported_parameters` when a request sets
# provider.require_parameters; everything else in a body is never a routing constraint.
ROUTABLE_PARAMETERS = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
        "min_p",
        "top_a",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning",
        "include_reasoning",
        "reasoning_effort",
        "verbosity",
    }
)


class ReasoningStyle(StrEnum):
    """How a model family shapes ``reasoning_details`` (as the replay cases show them)."""

    PLAIN = "plain"
    """``reasoning.text`` with ``format: unknown`` (Kimi, GLM, MiniMax…)."""
    ANTHROPIC = "anthropic"
    """``reasoning.text`` with a ``signature`` that must come back unchanged."""
    OPENAI = "openai"
    """``reasoning.summary`` plus a ``reasoning.encrypted`` block with an ``rs_…`` id."""
    GOOGLE = "google"
    """``reasoning.text`` plus a ``reasoning.encrypted`` block, both at index 0."""


TEXT = ("text",)
IMAGE_TOKENS = 1290
"""Completion tokens of one generated image (Gemini's count in the replay case)."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One catalog entry; prices are USD per token (per image for ``image_price`` and
    ``image_output_price``), kept exact as Decimal."""

    id: str
    canonical_slug: str
    name: str
    created: int
    description: str
    context_length: int
    max_completion_tokens: int
    tokenizer: str
    provider_name: str
    prompt_price: Decimal
    completion_price: Decimal
    is_moderated: bool
    supported_parameters: frozenset[str]
    native_finish_reasons: Mapping[str, str] = field(default_factory=lambda: _OPENAI_NATIVE)
    input_modalities: tuple[str, ...] = TEXT
    output_modalities: tuple[str, ...] = TEXT
    image_price: Decimal = Decimal(0)
    """Per input image."""
    image_output_price: Decimal = Decimal(0)
    """Per generated image (its image tokens are not billed as completion tokens then)."""
    audio_price: Decimal = Decimal(0)
    """Per input audio token (0: audio tokens cost the prompt price)."""
    reasoning_style: ReasoningStyle = ReasoningStyle.PLAIN
    embedding_dimensions: int = 0
    """The vectors' length, for an embedding model (output modality ``embeddings``)."""
    flexible_dimensions: bool = False
    """Whether ``dimensions`` may shorten its vectors (OpenAI's text-embedding-3)."""
    extra_prices: Mapping[str, str] = field(default_factory=dict)
    """Further ``pricing`` keys as listed (``web_search``, ``input_cache_read``, …)."""
    overrides: tuple[Mapping[str, Any], ...] = ()
    """Conditional prices (``min_prompt_tokens``…), listed as ``pricing.overrides``."""
    routes_to: str = ""
    """A router (``openrouter/auto``): listed at ``"-1"``, served and billed as this model."""
    caching: str = ""
    """``explicit`` (cache_control marks, write prices), ``automatic`` (prefixes cached
    without marks, reads only) or empty: no prompt cache."""
    cache_min_tokens: int = 1024
    """Prefixes shorter than this are not cached (Anthropic's and OpenAI's minimum)."""

    def price(self, key: str) -> Decimal | None:
        """A further ``pricing`` key's price, None when the model lists none."""
        value = self.extra_prices.get(key)
        return None if value is None else Decimal(value)

    def supports(self, parameter: str) -> bool:
        return parameter in self.supported_parameters

    def takes(self, modality: str) -> bool:
        return modality in self.input_modalities

    def makes(self, modality: str) -> bool:
        return modality in self.output_modalities

    def native_finish_reason(self, finish_reason: str | None) -> str | None:
        if finish_reason is None:
            return None
        return self.native_finish_reasons.get(finish_reason, finish_reason)

    def prompt_cost(self, prompt_tokens: int, media: PromptMedia | None) -> Decimal:
        if media is None:
            return self.prompt_price * prompt_tokens
        audio_rate = self.audio_price or self.prompt_price
        text = prompt_tokens - media.audio_tokens
        return (
            self.prompt_price * text
            + audio_rate * media.audio_tokens
            + self.image_price * media.images
        )

    def completion_cost(self, completion_tokens: int, images: int) -> Decimal:
        if not self.image_output_price:
            return self.completion_price * completion_tokens
        # Priced per image, its tokens are not billed again as completion tokens.
        text = completion_tokens - images * IMAGE_TOKENS
        return self.completion_price * text + self.image_output_price * images

    def cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        media: PromptMedia | None = None,
        images: int = 0,
    ) -> tuple[float, float]:
        """Prompt and completion cost in USD, as the floats the wire carries."""
        return (
            float(self.prompt_cost(prompt_tokens, media)),
            float(self.completion_cost(completion_tokens, images)),
        )

    def total_cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        media: PromptMedia | None = None,
        images: int = 0,
    ) -> float:
        """The whole cost, summed exactly before becoming a float, as OpenRouter's short
        decimals (0.0000594, never 5.9399999999999994e-05) are."""
        return float(
            self.prompt_cost(prompt_tokens, media) + self.completion_cost(completion_tokens, images)
        )

    def to_json(self) -> dict[str, Any]:
        """The entry as `GET /api/v1/models` lists it."""
        return {
            "id": self.id,
            "canonical_slug": self.canonical_slug,
            "hugging_face_id": "",
            "name": self.name,
            "created": self.created,
            "description": self.description,
            "context_length": self.context_length,
            "architecture": {
                "modality": "+".join(self.input_modalities)
                + "->"
                + "+".join(self.output_modalities),
                "input_modalities": list(self.input_modalities),
                "output_modalities": list(self.output_modalities),
                "tokenizer": self.tokenizer,
                "instruct_type": None,
            },
            "pricing": self._pricing_json(),
            "top_provider": {
                "context_length": self.context_length,
                "max_completion_tokens": self.max_completion_tokens,
                "is_moderated": self.is_moderated,
            },
            "per_request_limits": None,
            "supported_parameters": sorted(self.supported_parameters),
        }

    def _pricing_json(self) -> dict[str, Any]:
        if self.routes_to:
            # As the replay's openrouter/auto-beta: "-1" and no other key.
            return {"prompt": "-1", "completion": "-1"}
        # Like real listings: prompt and completion always, other kinds only when they apply.
        pricing: dict[str, Any] = {
            "prompt": _price_string(self.prompt_price),
            "completion": _price_string(self.completion_price),
            "request": "0",
            "image": _price_string(self.image_price),
        }
        if self.image_output_price:
            pricing["image_output"] = _price_string(self.image_output_price)
        if self.audio_price:
            pricing["audio"] = _price_string(self.audio_price)
        pricing.update(self.extra_prices)
        if self.overrides:
            pricing["overrides"] = [dict(o) for o in self.overrides]
        return pricing


def _price_string(price: Decimal) -> str:
    # Real listings use plain decimals ("0.00000015"), never exponent notation.
    return format(price, "f")


# Variant suffixes select a routing flavour of the same model, e.g. "openai/gpt-4o-mini:nitro".
_VARIANTS = frozenset({"free", "nitro", "floor", "online", "extended", "thinking", "exacto"})


class Catalog:
    """Immutable lookup over the simulated models."""

    def __init__(self, models: Iterable[ModelInfo]) -> None:
        self._models = {model.id: model for model in models}

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self._models.values())

    def get(self, model_id: str) -> ModelInfo | None:
        """The entry for an id, accepting known variant suffixes (`:free`, `:nitro`, ...)."""
        found = self._models.get(model_id)
        if found is None and ":" in model_id:
            # Suffixes stack: "meta-llama/llama-3.1-8b-instruct:free:online".
            base, *variants = model_id.split(":")
            if all(variant in _VARIANTS for variant in variants):
                found = self._models.get(base)
        return found

    def listing(
        self, required_parameters: Iterable[str] = (), output_modalities: str = ""
    ) -> list[dict[str, Any]]:
        """Models supporting every required parameter, as `/models` entries.

        As on OpenRouter, only text models unless ``output_modalities`` asks for others: a
        comma-separated list (a model making any of them is listed) or ``all``.
        """
        required = {p.strip() for p in required_parameters if p.strip()}
        wanted = {m.strip() for m in output_modalities.split(",") if m.strip()} or {"text"}
        return [
            model.to_json()
            for model in self._models.values()
            if required <= model.supported_parameters
            and ("all" in wanted or wanted & set(model.output_modalities))
        ]


DEFAULT_MODEL_ID = "openai/gpt-4o-mini"

DEFAULT_CATALOG = Catalog(
    (
        ModelInfo(
            id="openai/gpt-4o-mini",
            canonical_slug="openai/gpt-4o-mini-2024-07-18",
            name="OpenAI: GPT-4o-mini",
            created=1721260800,
            description="GPT-4o mini is OpenAI's small, affordable multimodal model.",
            context_length=128000,
            max_completion_tokens=16384,
            tokenizer="GPT",
            provider_name="OpenAI",
            prompt_price=Decimal("0.00000015"),
            completion_price=Decimal("0.0000006"),
            is_moderated=True,
            supported_parameters=_SAMPLING
            | {
                "logit_bias",
                "logprobs",
                "top_logprobs",
                "response_format",
                "structured_outputs",
                "tools",
                "tool_choice",
                "parallel_tool_calls",
            },
            input_modalities=("text", "image", "file"),
            image_price=Decimal("0.000217"),
            caching="automatic",
            extra_prices={"input_cache_read": "0.000000075"},
        ),
        ModelInfo(
            id="anthropic/claude-3.5-haiku",
            canonical_slug="anthropic/claude-3-5-haiku",
            name="Anthropic: Claude 3.5 Haiku",
            created=1730678400,
            description="Claude 3.5 Haiku: fast, with improved coding and tool use.",
            context_length=200000,
            max_completion_tokens=8192,
            tokenizer="Claude",
            provider_name="Anthropic",
            prompt_price=Decimal("0.0000008"),
            completion_price=Decimal("0.000004"),
            is_moderated=True,
            supported_parameters=frozenset(
                {
                    "max_tokens",
                    "temperature",
                    "top_p",
                    "top_k",
                    "stop",
                    "response_format",
                    "tools",
                    "tool_choice",
                }
            ),
            native_finish_reasons=_ANTHROPIC_NATIVE,
            input_modalities=("text", "image"),
            image_price=Decimal("0.0008"),
        ),
        ModelInfo(
            id="meta-llama/llama-3.1-8b-instruct",
            canonical_slug="meta-llama/llama-3.1-8b-instruct",
            name="Meta: Llama 3.1 8B Instruct",
            created=1721692800,
            description="Meta's Llama 3.1 8B instruct-tuned model.",
            context_length=131072,
            max_completion_tokens=16384,
            tokenizer="Llama3",
            provider_name="DeepInfra",
            prompt_price=Decimal("0.00000002"),
            completion_price=Decimal("0.00000003"),
            is_moderated=False,
            supported_parameters=_SAMPLING
            | {"top_k", "min_p", "repetition_penalty", "response_format"},
        ),
        ModelInfo(
            id="mistralai/mistral-7b-instruct",
            canonical_slug="mistralai/mistral-7b-instruct",
            name="Mistral: Mistral 7B Instruct",
            created=1716768000,
            description="A 7.3B parameter model tuned for speed and context length.",
            context_length=32768,
            max_completion_tokens=16384,
            tokenizer="Mistral",
            provider_name="Together",
            prompt_price=Decimal("0.000000028"),
            completion_price=Decimal("0.000000054"),
            is_moderated=False,
            supported_parameters=_SAMPLING | {"top_k", "min_p", "repetition_penalty"},
        ),
        ModelInfo(
            id="google/gemini-2.0-flash-001",
            canonical_slug="google/gemini-2.0-flash-001",
            name="Google: Gemini 2.0 Flash",
            created=1738769413,
            description="Gemini 2.0 Flash: faster time to first token than 1.5 Pro.",
            context_length=1048576,
            max_completion_tokens=8192,
            tokenizer="Gemini",
            provider_name="Google AI Studio",
            prompt_price=Decimal("0.0000001"),
            completion_price=Decimal("0.0000004"),
            is_moderated=False,
            supported_parameters=_SAMPLING
            | {"response_format", "structured_outputs", "tools", "tool_choice"},
            native_finish_reasons=_GOOGLE_NATIVE,
            input_modalities=("text", "image", "file", "audio", "video"),
            image_price=Decimal("0.0000258"),
            audio_price=Decimal("0.0000007"),
        ),
        ModelInfo(
            id="openrouter/sim-fast",
            canonical_slug="openrouter/sim-fast",
            name="Simulator: Fast",
            created=1735689600,
            description="A cheap simulated model with every feature, for benchmarks.",
            context_length=131072,
            max_completion_tokens=32768,
            tokenizer="Other",
            provider_name="Simulator",
            prompt_price=Decimal("0.0000001"),
            completion_price=Decimal("0.0000002"),
            is_moderated=False,
            supported_parameters=frozenset(ROUTABLE_PARAMETERS)
            | {"response_format", "structured_outputs"},
            native_finish_reasons=_SIM_NATIVE,
            input_modalities=("text", "image", "file", "audio", "video"),
            output_modalities=("text", "image"),
            image_price=Decimal("0.0001"),
            image_output_price=Decimal("0.001"),
            audio_price=Decimal("0.0000002"),
        ),
        ModelInfo(
            id="anthropic/claude-sonnet-4.5",
            canonical_slug="anthropic/claude-4.5-sonnet-20250929",
            name="Anthropic: Claude Sonnet 4.5",
            created=1759161676,
            description="Claude Sonnet 4.5: extended thinking with signed reasoning blocks.",
            context_length=1000000,
            max_completion_tokens=64000,
            tokenizer="Claude",
            provider_name="Anthropic",
            prompt_price=Decimal("0.000003"),
            completion_price=Decimal("0.000015"),
            is_moderated=True,
            supported_parameters=_REASONING
            | {
                "max_tokens",
                "temperature",
                "top_p",
                "top_k",
                "stop",
                "response_format",
                "structured_outputs",
                "tools",
                "tool_choice",
            },
            native_finish_reasons=_ANTHROPIC_NATIVE,
            input_modalities=("text", "image", "file"),
            image_price=Decimal("0.0048"),
            reasoning_style=ReasoningStyle.ANTHROPIC,
            caching="explicit",
            extra_prices={
                "web_search": "0.01",
                "input_cache_read": "0.0000003",
                "input_cache_write": "0.00000375",
                "input_cache_write_1h": "0.000006",
            },
        ),
        ModelInfo(
            id="openai/gpt-5-mini",
            canonical_slug="openai/gpt-5-mini-2025-08-07",
            name="OpenAI: GPT-5 Mini",
            created=1754587407,
            description="GPT-5 Mini: reasoning summaries and encrypted reasoning items.",
            context_length=400000,
            max_completion_tokens=128000,
            tokenizer="GPT",
            provider_name="OpenAI",
            prompt_price=Decimal("0.00000025"),
            completion_price=Decimal("0.000002"),
            is_moderated=True,
            supported_parameters=_REASONING
            | {
                "max_tokens",
                "seed",
                "response_format",
                "structured_outputs",
                "tools",
                "tool_choice",
                "parallel_tool_calls",
            },
            native_finish_reasons=_SIM_NATIVE,
            input_modalities=("text", "image", "file"),
            reasoning_style=ReasoningStyle.OPENAI,
            caching="automatic",
            extra_prices={"web_search": "0.01", "input_cache_read": "0.000000025"},
        ),
        ModelInfo(
            id="google/gemini-3-flash-preview",
            canonical_slug="google/gemini-3-flash-preview-20251217",
            name="Google: Gemini 3 Flash Preview",
            created=1765987078,
            description="Gemini 3 Flash: thought text plus an encrypted thought signature.",
            context_length=1048576,
            max_completion_tokens=65535,
            tokenizer="Gemini",
            provider_name="Google",
            prompt_price=Decimal("0.0000005"),
            completion_price=Decimal("0.000003"),
            is_moderated=False,
            supported_parameters=_SAMPLING
            | _REASONING
            | {"response_format", "structured_outputs", "tools", "tool_choice"},
            native_finish_reasons=_GOOGLE_NATIVE,
            input_modalities=("text", "image", "file", "audio", "video"),
            image_price=Decimal("0.0000005"),
            audio_price=Decimal("0.000001"),
            reasoning_style=ReasoningStyle.GOOGLE,
            caching="explicit",
            extra_prices={
                "web_search": "0.014",
                "internal_reasoning": "0.000003",
                "input_cache_read": "0.00000005",
                "input_cache_write": "0.0000000833",
                "input_audio_cache": "0.0000001",
            },
            overrides=(
                {"min_prompt_tokens": 200000, "prompt": "0.000001", "completion": "0.000006"},
            ),
        ),
        ModelInfo(
            id="google/gemini-2.5-flash-image",
            canonical_slug="google/gemini-2.5-flash-image",
            name="Google: Gemini 2.5 Flash Image",
            created=1759870431,
            description="Image generation and editing: answers with text and PNG images.",
            context_length=32768,
            max_completion_tokens=32768,
            tokenizer="Gemini",
            provider_name="Google",
            prompt_price=Decimal("0.0000003"),
            completion_price=Decimal("0.0000025"),
            is_moderated=False,
            supported_parameters=_SAMPLING | {"response_format", "structured_outputs"},
            native_finish_reasons=_GOOGLE_NATIVE,
            input_modalities=("image", "text"),
            output_modalities=("image", "text"),
            image_price=Decimal("0.001238"),
            image_output_price=Decimal("0.039"),
        ),
        ModelInfo(
            id="openrouter/auto",
            canonical_slug="openrouter/auto",
            name="Auto Router",
            created=1699401600,
            description="Routes each prompt to a model; billed as the model that served.",
            context_length=2000000,
            max_completion_tokens=0,
            tokenizer="Router",
            provider_name="OpenAI",
            prompt_price=Decimal(0),
            completion_price=Decimal(0),
            is_moderated=False,
            supported_parameters=_SAMPLING | {"response_format", "tools", "tool_choice"},
            input_modalities=("text", "image"),
            routes_to="openai/gpt-4o-mini",
        ),
        ModelInfo(
            id="openai/text-embedding-3-small",
            canonical_slug="openai/text-embedding-3-small",
            name="OpenAI: Text Embedding 3 Small",
            created=1706140800,
            description="Small text embeddings; dimensions can be shortened.",
            context_length=8192,
            max_completion_tokens=0,
            tokenizer="GPT",
            provider_name="OpenAI",
            prompt_price=Decimal("0.00000002"),
            completion_price=Decimal(0),
            is_moderated=False,
            supported_parameters=frozenset(),
            output_modalities=("embeddings",),
            embedding_dimensions=1536,
            flexible_dimensions=True,
        ),
        ModelInfo(
            id="nvidia/llama-nemotron-embed-vl-1b-v2",
            canonical_slug="nvidia/llama-nemotron-embed-vl-1b-v2",
            name="NVIDIA: Llama Nemotron Embed VL 1B v2",
            created=1761955200,
            description="Embeddings of text and images in one space.",
            context_length=8192,
            max_completion_tokens=0,
            tokenizer="Llama3",
            provider_name="Nvidia",
            prompt_price=Decimal("0.00000005"),
            completion_price=Decimal(0),
            is_moderated=False,
            supported_parameters=frozenset(),
            input_modalities=("text", "image"),
            output_modalities=("embeddings",),
            image_price=Decimal("0.0001"),
            embedding_dimensions=2048,
        ),
    )
)
