"""The policy sections of the callers file: ``[default_policy]`` and each ``[callers.policy]``.

[default_policy]                       # every caller's, unless its own section sets the rule
data_collection = "deny"               # only providers that neither store nor train on prompts
zdr = true                             # only zero-data-retention endpoints
allowed_providers = ["openai", "anthropic", "google-vertex"]
forbidden_providers = ["deepinfra/turbo"]
allowed_quantizations = ["fp16", "bf16", "fp32", "unknown"]
provider_fallbacks = true              # false: no provider beyond a request's `order`
fallback_models = ["openai/*"]         # models a request may name as fallbacks; [] none
allowed_plugins = ["file-parser"]      # web (and :online), file-parser, web-fetch; [] none
allowed_server_tools = []              # e.g. "openrouter:web_search"; [] none
allowed_input_modalities = ["text", "image", "file"]
allowed_output_modalities = ["text"]
max_reasoning_effort = "medium"        # none, minimal, low, medium, high, xhigh, max
forbidden_provider_answers = "flag"    # flag (return, flagged) or refuse (withhold)
[default_policy.max_price]             # decimal strings, USD
prompt = "3"                           # per million prompt tokens
completion = "15"                      # per million generated tokens
audio = "50"                           # per million audio tokens
image = "0.01"                         # per input image
request = "0"                          # per request

A caller's own rule replaces the default's rule of the same name (``max_price`` kind by
kind), so the callers file can give one team more than the default on purpose; what a
request may then ask is bounded by the result.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from service.domain.completion import Modality, ReasoningEffort
from service.domain.policy import KNOWN_PLUGINS, OPEN_POLICY, AnswerCheck, Policy, Rule
from service.domain.providers import (
    MAX_PRICE_KINDS,
    MAX_PROVIDERS,
    PROVIDER_SLUG,
    DataCollection,
    MaxPrice,
    Quantization,
)

_Slug = Annotated[str, StringConstraints(pattern=PROVIDER_SLUG.pattern)]
_Glob = Annotated[str, StringConstraints(min_length=1, max_length=200)]
_ServerTool = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_:.-]{0,63}$")]
_Price = Annotated[Decimal, Field(ge=0, le=1_000_000, allow_inf_nan=False)]


class PolicyPrices(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: _Price | None = None
    completion: _Price | None = None
    image: _Price | None = None
    audio: _Price | None = None
    request: _Price | None = None


class PolicySection(BaseModel):
    """One policy section as written; a rule left out is inherited (or open)."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    data_collection: DataCollection | None = None
    zdr: bool | None = None
    allowed_providers: list[_Slug] | None = Field(
        default=None, min_length=1, max_length=MAX_PROVIDERS
    )
    forbidden_providers: list[_Slug] | None = Field(default=None, max_length=MAX_PROVIDERS)
    allowed_quantizations: list[Quantization] | None = Field(default=None, min_length=1)
    max_price: PolicyPrices | None = None
    provider_fallbacks: bool | None = None
    fallback_models: list[_Glob] | None = None
    allowed_plugins: list[str] | None = None
    allowed_server_tools: list[_ServerTool] | None = None
    allowed_input_modalities: list[Modality] | None = None
    allowed_output_modalities: list[Modality] | None = None
    max_reasoning_effort: ReasoningEffort | None = None
    forbidden_provider_answers: AnswerCheck | None = None

    @field_validator("allowed_plugins")
    @classmethod
    def _known_plugins(cls, value: list[str] | None) -> list[str] | None:
        for plugin in value or ():
            if plugin not in KNOWN_PLUGINS:
                known = ", ".join(sorted(KNOWN_PLUGINS))
                raise ValueError(f"unknown plugin {plugin[:40]!r} (known: {known})")
        return value

    @field_validator("allowed_input_modalities", "allowed_output_modalities")
    @classmethod
    def _text_always(cls, value: list[Modality] | None) -> list[Modality] | None:
        if value is not None and Modality.TEXT not in value:
            raise ValueError('must include "text": every request and answer has text')
        return value


RULE_NAMES = ", ".join(rule.value for rule in Rule)


def effective_policy(default: PolicySection | None, own: PolicySection | None) -> Policy:
    """The caller's rules over the default's, rule by rule (``max_price`` kind by kind)."""
    if default is None and own is None:
        return OPEN_POLICY
    layers = [layer for layer in (default, own) if layer is not None]
    rules: dict[str, Any] = {}
    prices: dict[str, Decimal] = {}
    for layer in layers:
        for name in layer.model_fields_set:
            value = getattr(layer, name)
            if value is None:
                continue
            if name == "max_price":
                prices.update(
                    {k: v for k in MAX_PRICE_KINDS if (v := getattr(value, k)) is not None}
                )
            else:
                rules[name] = value
    return Policy(
        data_collection=rules.get("data_collection", DataCollection.ALLOW),
        zdr=rules.get("zdr", False),
        allowed_providers=_tuple(rules.get("allowed_providers")),
        forbidden_providers=tuple(rules.get("forbidden_providers", ())),
        allowed_quantizations=_tuple(rules.get("allowed_quantizations")),
        max_price=MaxPrice(**prices),
        provider_fallbacks=rules.get("provider_fallbacks", True),
        fallback_models=_tuple(rules.get("fallback_models")),
        allowed_plugins=_set(rules.get("allowed_plugins")),
        allowed_server_tools=_set(rules.get("allowed_server_tools")),
        allowed_input_modalities=_set(rules.get("allowed_input_modalities")),
        allowed_output_modalities=_set(rules.get("allowed_output_modalities")),
        max_reasoning_effort=rules.get("max_reasoning_effort"),
        forbidden_provider_answers=rules.get("forbidden_provider_answers", AnswerCheck.FLAG),
    )


def _tuple(value: list[Any] | None) -> tuple[Any, ...] | None:
    return None if value is None else tuple(dict.fromkeys(value))


def _set(value: list[Any] | None) -> frozenset[Any] | None:
    return None if value is None else frozenset(value)
