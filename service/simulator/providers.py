"""Provider routing: which of a model's endpoints serves a request, per its ``provider`` object.

Each model has one or more endpoints (providers) with their own prices, data policies,
quantization, throughput and latency. The first is the one ``/models`` lists the prices of,
and the dearest, so the listing bounds what any endpoint charges. The preferences filter the
endpoints as OpenRouter documents (``only``, ``ignore``, ``data_collection``, ``zdr``,
``quantizations``, ``max_price``, ``require_parameters``), then order them (``order`` first,
the rest only with ``allow_fallbacks``; ``sort`` by price, throughput or latency; a ``:nitro``
or ``:floor`` suffix sorts when ``sort`` is unset; else the listing's order, deterministic
where OpenRouter load-balances). The first that remains serves: its name is the answer's
``provider`` and its prices are billed. None remaining is OpenRouter's 404.

``[[sim:serve-provider=SLUG]]`` makes the simulator misbehave: that provider serves whatever
the preferences say, so a test can see what the gateway does with an answer its policy
forbids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from .catalog import ROUTABLE_PARAMETERS, ModelInfo
from .errors import ErrorReply, bad_request, no_endpoints, no_endpoints_for_parameters
from .scenarios import DirectiveError

_MILLION = Decimal(1_000_000)
QUANTIZATIONS = frozenset(
    {"int4", "int8", "fp4", "mxfp4", "nvfp4", "fp6", "fp8", "mxfp8", "fp16", "bf16", "fp32"}
    | {"unknown"}
)
_SORTS = frozenset({"price", "throughput", "latency", "exacto"})
_PREFERENCE_KEYS = frozenset(
    {
        "order",
        "only",
        "ignore",
        "allow_fallbacks",
        "require_parameters",
        "data_collection",
        "zdr",
        "enforce_distillable_text",
        "quantizations",
        "sort",
        "max_price",
        "preferred_min_throughput",
        "preferred_max_latency",
    }
)
_PRICE_KINDS = frozenset({"prompt", "completion", "image", "audio", "request"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One provider's offer of a model. Prices are USD per token (``None``: the model's)."""

    slug: str
    name: str
    """As answers name it (``provider``): ``DeepInfra``, ``Google`` for Vertex AI …"""
    prompt_price: Decimal | None = None
    completion_price: Decimal | None = None
    quantization: str = "unknown"
    zdr: bool = False
    """Keeps nothing (zero data retention)."""
    collects_data: bool = False
    """Stores or trains on prompts (excluded by ``data_collection: deny``)."""
    throughput: float = 100.0
    """Tokens per second (p50)."""
    latency_ms: float = 500.0
    """Time to first token (p50)."""
    lacks: frozenset[str] = frozenset()
    """Parameters of the model this endpoint does not support."""


def _e(slug: str, name: str, *prices: str, **kw: Any) -> Endpoint:
    prompt, completion = (Decimal(p) for p in prices) if prices else (None, None)
    return Endpoint(slug, name, prompt, completion, **kw)


ENDPOINTS: Mapping[str, tuple[Endpoint, ...]] = {
    "openai/gpt-4o-mini": (
        _e("openai", "OpenAI", throughput=80, latency_ms=400),
        _e("azure", "Azure", zdr=True, throughput=60, latency_ms=600),
    ),
    "anthropic/claude-3.5-haiku": (
        _e("anthropic", "Anthropic", throughput=60, latency_ms=700),
        _e("amazon-bedrock", "Amazon Bedrock", zdr=True, throughput=50, latency_ms=900),
        _e("google-vertex", "Google", zdr=True, throughput=70, latency_ms=800),
    ),
    "meta-llama/llama-3.1-8b-instruct": (
        _e("deepinfra", "DeepInfra", quantization="bf16", throughput=120, latency_ms=300),
        _e(
            "deepinfra/turbo",
            "DeepInfra",
            "0.000000015",
            "0.00000002",
            quantization="fp8",
            throughput=250,
            latency_ms=250,
        ),
        _e(
            "groq",
            "Groq",
            "0.00000002",
            "0.000000025",
            quantization="fp16",
            zdr=True,
            throughput=900,
            latency_ms=150,
            lacks=frozenset({"top_k", "repetition_penalty", "min_p"}),
        ),
        _e(
            "together",
            "Together",
            "0.000000018",
            "0.000000018",
            quantization="fp8",
            throughput=200,
            latency_ms=400,
        ),
        _e(
            "chutes",
            "Chutes",
            "0.00000001",
            "0.00000001",
            quantization="fp8",
            collects_data=True,
            throughput=90,
            latency_ms=1200,
            lacks=frozenset({"response_format"}),
        ),
    ),
    "mistralai/mistral-7b-instruct": (
        _e("together", "Together", quantization="fp16", throughput=150, latency_ms=350),
        _e(
            "deepinfra",
            "DeepInfra",
            "0.00000002",
            "0.00000004",
            quantization="bf16",
            throughput=110,
            latency_ms=300,
        ),
    ),
    "openai/text-embedding-3-small": (
        _e("openai", "OpenAI", throughput=2000, latency_ms=150),
        _e("azure", "Azure", zdr=True, throughput=1500, latency_ms=200),
    ),
    "google/gemini-2.0-flash-001": (
        _e("google-ai-studio", "Google AI Studio", throughput=180, latency_ms=450),
        _e("google-vertex", "Google", zdr=True, throughput=160, latency_ms=500),
    ),
}
"""Models with several providers; every other model has one, named as in its catalog entry."""

PROVIDER_NAMES = {
    endpoint.slug.split("/", 1)[0]: endpoint.name
    for endpoints in ENDPOINTS.values()
    for endpoint in endpoints
}
"""Every provider the simulator knows, by base slug, for ``serve-provider``."""


def endpoints_of(model: ModelInfo) -> tuple[Endpoint, ...]:
    found = ENDPOINTS.get(model.id)
    if found is not None:
        return found
    slug = model.provider_name.lower().replace(" ", "-")
    return (Endpoint(slug, model.provider_name),)


class RoutingError(Exception):
    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _matches(pattern: str, slug: str) -> bool:
    # A base slug covers every variant of the provider; a full slug one endpoint.
    return pattern == slug or ("/" not in pattern and slug.startswith(pattern + "/"))


def _covered(slug: str, patterns: list[str]) -> bool:
    return any(_matches(p.lower(), slug) for p in patterns)


def _slugs(prefs: Mapping[str, Any], key: str) -> list[str] | None:
    value = prefs.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RoutingError(bad_request(f"provider.{key} must be an array of strings"))
    return value


def _flag(prefs: Mapping[str, Any], key: str) -> bool | None:
    value = prefs.get(key)
    if value is not None and not isinstance(value, bool):
        raise RoutingError(bad_request(f"provider.{key} must be a boolean"))
    return value


def _max_prices(prefs: Mapping[str, Any]) -> dict[str, Decimal]:
    value = prefs.get("max_price")
    if value is None:
        return {}
    if not isinstance(value, dict) or not set(value) <= _PRICE_KINDS:
        raise RoutingError(bad_request("provider.max_price must be an object of prices"))
    prices = {}
    for kind, raw in value.items():
        try:
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise InvalidOperation
            prices[kind] = Decimal(str(raw))
        except InvalidOperation:
            raise RoutingError(bad_request(f"provider.max_price.{kind} must be a number")) from None
    return prices


def _sort(prefs: Mapping[str, Any], model_id: str) -> str | None:
    value = prefs.get("sort")
    if isinstance(value, dict):
        value = value.get("by")
    if value is None:
        suffixes = model_id.split(":")[1:]
        implied = [{"nitro": "throughput", "floor": "price"}.get(s) for s in suffixes]
        chosen = [s for s in implied if s is not None]
        return chosen[-1] if chosen else None
    if value not in _SORTS:
        raise RoutingError(bad_request(f"provider.sort must be one of {sorted(_SORTS)}"))
    return str(value)


def _price(endpoint: Endpoint, model: ModelInfo) -> tuple[Decimal, Decimal]:
    prompt = endpoint.prompt_price if endpoint.prompt_price is not None else model.prompt_price
    completion = (
        endpoint.completion_price
        if endpoint.completion_price is not None
        else model.completion_price
    )
    return prompt, completion


def _within(endpoint: Endpoint, model: ModelInfo, ceilings: Mapping[str, Decimal]) -> bool:
    prompt, completion = _price(endpoint, model)
    per_token = {"prompt": prompt, "completion": completion, "audio": model.audio_price}
    for kind, ceiling in ceilings.items():
        if kind in per_token and per_token[kind] * _MILLION > ceiling:
            return False
        if kind == "image" and model.image_price > ceiling:
            return False
    return True  # no simulated endpoint charges per request


def route(
    model: ModelInfo,
    model_id: str,
    body: Mapping[str, Any],
    serve_provider: str | None,
    required: Callable[[], set[str]],
) -> ModelInfo:
    """``model`` as the chosen endpoint serves it (its provider name and prices); raises
    ``RoutingError`` with OpenRouter's reply when the preferences are malformed or leave no
    endpoint. ``required`` gives the request's routable parameters (for
    ``require_parameters``)."""
    endpoints = endpoints_of(model)
    if serve_provider is not None:
        return _serve(model, endpoints, serve_provider)
    prefs = body.get("provider")
    if prefs is None and ":" not in model_id:
        return _priced(model, endpoints[0])  # the common case: the listed endpoint
    if prefs is None:
        prefs = {}
    if not isinstance(prefs, dict):
        raise RoutingError(bad_request("provider must be an object"))
    unknown = set(prefs) - _PREFERENCE_KEYS
    if unknown:
        raise RoutingError(bad_request(f"provider: unknown field {sorted(unknown)[0]!r}"))

    candidates = list(endpoints)
    only = _slugs(prefs, "only")
    if only is not None:
        candidates = [e for e in candidates if _covered(e.slug, only)]
    ignore = _slugs(prefs, "ignore") or []
    candidates = [e for e in candidates if not _covered(e.slug, ignore)]
    if not candidates:
        raise RoutingError(_no_provider(model_id, "No allowed providers are available"))

    data_collection = prefs.get("data_collection")
    if data_collection not in (None, "allow", "deny"):
        raise RoutingError(bad_request('provider.data_collection must be "allow" or "deny"'))
    if data_collection == "deny":
        candidates = [e for e in candidates if not e.collects_data]
    if _flag(prefs, "zdr"):
        candidates = [e for e in candidates if e.zdr]
    if not candidates:
        raise RoutingError(_no_provider(model_id, "No endpoints found matching your data policy"))

    quantizations = _slugs(prefs, "quantizations")
    if quantizations is not None:
        if not set(quantizations) <= QUANTIZATIONS:
            raise RoutingError(bad_request("provider.quantizations: unknown quantization"))
        candidates = [e for e in candidates if e.quantization in quantizations]
    ceilings = _max_prices(prefs)
    candidates = [e for e in candidates if _within(e, model, ceilings)]
    if not candidates:
        raise RoutingError(
            _no_provider(model_id, "No endpoints found within the price and quantization limits")
        )
    if _flag(prefs, "require_parameters"):
        needed = required()
        candidates = [e for e in candidates if needed <= model.supported_parameters - e.lacks]
        if not candidates:
            raise RoutingError(no_endpoints_for_parameters())

    order = _slugs(prefs, "order") or []
    allow_fallbacks = _flag(prefs, "allow_fallbacks")
    sort = _sort(prefs, model_id)
    ranked = _ranked(candidates, model, sort)
    ordered = [e for pattern in order for e in ranked if _matches(pattern.lower(), e.slug)]
    ordered = list(dict.fromkeys(ordered))
    if allow_fallbacks is not False or not order:
        ordered += [e for e in ranked if e not in ordered]
    if not ordered:
        raise RoutingError(_no_provider(model_id, "No allowed providers are available"))
    return _priced(model, ordered[0])


def _ranked(candidates: list[Endpoint], model: ModelInfo, sort: str | None) -> list[Endpoint]:
    if sort == "price":
        return sorted(candidates, key=lambda e: sum(_price(e, model)))
    if sort == "throughput":
        return sorted(candidates, key=lambda e: -e.throughput)
    if sort == "latency":
        return sorted(candidates, key=lambda e: e.latency_ms)
    return candidates


def _no_provider(model_id: str, why: str) -> ErrorReply:
    return no_endpoints(f"{why} for {model_id}.")


def _serve(model: ModelInfo, endpoints: tuple[Endpoint, ...], slug: str) -> ModelInfo:
    for endpoint in endpoints:
        if _matches(slug, endpoint.slug):
            return _priced(model, endpoint)
    name = PROVIDER_NAMES.get(slug.split("/", 1)[0])
    if name is None:
        known = ", ".join(sorted(PROVIDER_NAMES))
        raise DirectiveError(f"serve-provider={slug}: unknown provider (known: {known})")
    return _priced(model, Endpoint(slug, name))


def _priced(model: ModelInfo, endpoint: Endpoint) -> ModelInfo:
    prompt, completion = _price(endpoint, model)
    if (
        endpoint.name == model.provider_name
        and prompt == model.prompt_price
        and completion == model.completion_price
    ):
        return model
    return dataclasses.replace(
        model, provider_name=endpoint.name, prompt_price=prompt, completion_price=completion
    )


def required_parameters(body: Mapping[str, Any]) -> set[str]:
    """The routable parameters a request sets (what ``require_parameters`` checks)."""
    needed = {
        name for name, value in body.items() if name in ROUTABLE_PARAMETERS and value is not None
    }
    if body.get("max_completion_tokens") is not None:
        needed.add("max_tokens")
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        needed.add("structured_outputs")
    elif kind == "json_object":
        needed.add("response_format")
    return needed
