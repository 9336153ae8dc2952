"""An organisation's policy for a caller: where its prompts may go and what a call may cost.

A policy comes from the callers file (a ``[default_policy]`` and each caller's own rules) and
is applied to every chat request after validation: a request may narrow what the policy
allows, never widen it. Per rule, a request that asks for more than the policy allows is
refused (PERMISSION_DENIED / POLICY_VIOLATION, ErrorInfo metadata ``rule`` and ``field``);
one that leaves the setting open gets the policy's value. The merged provider preferences
go upstream; which policy applied (its ``id``, a hash of its rules) goes in the ledger.

After the answer, ``answer_breach`` checks the provider OpenRouter reports against the
policy: OpenRouter should never route against it, but the gateway does not take that on
trust.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from service.domain.completion import (
    PART_MODALITY,
    CompletionRequest,
    FilePart,
    Modality,
    PdfEngine,
    ReasoningConfig,
    ReasoningEffort,
)
from service.domain.embeddings import EmbeddingRequest
from service.domain.models import ModelInfo
from service.domain.providers import (
    MAX_PRICE_KINDS,
    NO_MAX_PRICE,
    DataCollection,
    MaxPrice,
    ProviderPreferences,
    Quantization,
    covered,
    provider_slug,
)
from service.domain.server_tools import WEB_SEARCH_TOOL, WebSearchMode
from service.domain.variants import WEB_PLUGIN, ModelId, UnknownVariantError, parse_model_id
from service.errors import InvalidRequestError, PermissionDeniedError, Reason, quoted

FILE_PARSER_PLUGIN = "file-parser"
KNOWN_PLUGINS = frozenset({WEB_PLUGIN, FILE_PARSER_PLUGIN, "web-fetch"})
"""Plugins a policy may name: OpenRouter's ``web`` (also what ``:online`` means),
``file-parser`` (documents read by an OCR or text engine, which may cost per page) and
``web-fetch``. The gateway's own ``response-healing`` (free, for CompleteStructured) is no
caller's choice and no policy's."""

EFFORT_ORDER: tuple[ReasoningEffort, ...] = tuple(ReasoningEffort)
"""From none to max: OpenRouter's efforts in increasing share of ``max_tokens``."""
_EFFORT_SHARE = {
    ReasoningEffort.NONE: Decimal(0),
    ReasoningEffort.MINIMAL: Decimal("0.1"),
    ReasoningEffort.LOW: Decimal("0.2"),
    ReasoningEffort.MEDIUM: Decimal("0.5"),
    ReasoningEffort.HIGH: Decimal("0.8"),
    ReasoningEffort.XHIGH: Decimal("0.95"),
    ReasoningEffort.MAX: Decimal("0.95"),
}
"""The share of ``max_tokens`` each effort spends on reasoning, as OpenRouter documents it."""
_MIN_REASONING_BUDGET = 1024
"""Anthropic's smallest thinking budget: any effort but ``none`` may spend this much."""
DEFAULT_EFFORT = ReasoningEffort.MEDIUM
"""What reasoning ``enabled`` (or a ``:thinking`` model) runs at, and what a reasoning model
spends when a request says nothing."""


class AnswerCheck(StrEnum):
    """What to do with an answer served by a provider the policy forbids."""

    FLAG = "flag"
    """Return it; the ledger row, a metric and a warning log line say so."""
    REFUSE = "refuse"
    """Withhold it: PERMISSION_DENIED / UPSTREAM_POLICY_BREACH (the call is still billed and
    accounted; a stream is ended before its first message)."""


class Rule(StrEnum):
    """Every rule a policy can hold: the keys of a callers-file policy section."""

    DATA_COLLECTION = "data_collection"
    ZDR = "zdr"
    ALLOWED_PROVIDERS = "allowed_providers"
    FORBIDDEN_PROVIDERS = "forbidden_providers"
    ALLOWED_QUANTIZATIONS = "allowed_quantizations"
    MAX_PRICE = "max_price"
    PROVIDER_FALLBACKS = "provider_fallbacks"
    FALLBACK_MODELS = "fallback_models"
    ALLOWED_PLUGINS = "allowed_plugins"
    ALLOWED_SERVER_TOOLS = "allowed_server_tools"
    ALLOWED_INPUT_MODALITIES = "allowed_input_modalities"
    ALLOWED_OUTPUT_MODALITIES = "allowed_output_modalities"
    MAX_REASONING_EFFORT = "max_reasoning_effort"
    FORBIDDEN_PROVIDER_ANSWERS = "forbidden_provider_answers"


@dataclass(frozen=True, slots=True)
class Policy:
    """One caller's effective rules; the defaults allow everything OpenRouter would.

    ``None`` for an ``allowed_*`` rule means "no restriction"; an empty set allows nothing.
    """

    data_collection: DataCollection = DataCollection.ALLOW
    """``deny``: only providers that neither store nor train on prompts."""
    zdr: bool = False
    """Zero data retention required: only endpoints that keep nothing."""
    allowed_providers: tuple[str, ...] | None = None
    forbidden_providers: tuple[str, ...] = ()
    allowed_quantizations: tuple[Quantization, ...] | None = None
    max_price: MaxPrice = NO_MAX_PRICE
    provider_fallbacks: bool = True
    """False: no provider beyond the ones ordered (OpenRouter's ``allow_fallbacks``)."""
    fallback_models: tuple[str, ...] | None = None
    """Globs of models a request may name in ``fallback_models``; empty: none."""
    allowed_plugins: frozenset[str] | None = None
    allowed_server_tools: frozenset[str] | None = None
    allowed_input_modalities: frozenset[Modality] | None = None
    allowed_output_modalities: frozenset[Modality] | None = None
    max_reasoning_effort: ReasoningEffort | None = None
    forbidden_provider_answers: AnswerCheck = AnswerCheck.FLAG
    id: str = field(default="", compare=False)
    """``p-`` and 16 hex digits of the SHA-256 of the rules: the same rules, the same id."""
    silent: ProviderPreferences | None = field(default=None, compare=False, repr=False)
    """The provider object a request without preferences gets (None: none), worked out once:
    most requests carry none, and merging per call would cost more than the call's checks."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"p-{_digest(self)[:16]}")
        merged = merge_preferences(_NO_PREFERENCES, self)
        object.__setattr__(self, "silent", None if merged.is_empty() else merged)

    @property
    def restricts_providers(self) -> bool:
        return self.allowed_providers is not None or bool(self.forbidden_providers)

    def rules(self) -> dict[str, Any]:
        """The rules that differ from the defaults, as JSON values (for logs and hashing)."""
        set_rules: dict[str, Any] = {}
        for rule in Rule:
            value = getattr(self, rule.value)
            if value != getattr(_OPEN, rule.value):
                set_rules[rule.value] = _json_value(value)
        return set_rules

    def allows_model_fallback(self, model: str) -> bool:
        patterns = self.fallback_models
        return patterns is None or any(fnmatch.fnmatchcase(model, p) for p in patterns)

    def allows_output(self, modality: Modality) -> bool:
        allowed = self.allowed_output_modalities
        return allowed is None or modality in allowed


def _json_value(value: Any) -> Any:
    if isinstance(value, MaxPrice):
        return {k: str(v) for k in MAX_PRICE_KINDS if (v := getattr(value, k)) is not None}
    if isinstance(value, frozenset):
        return sorted(str(v) for v in value)
    if isinstance(value, tuple):
        return [str(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    return value


def _digest(policy: Policy) -> str:
    rules = {}
    for rule in Rule:
        rules[rule.value] = _json_value(getattr(policy, rule.value))
    canonical = json.dumps(rules, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def violation(policy: Policy, rule: Rule, field_name: str, what: str) -> PermissionDeniedError:
    """The refusal of a request that asks for more than ``rule`` allows."""
    return PermissionDeniedError(
        f"{field_name}: {what} (the caller's policy, rule {rule.value})",
        reason=Reason.POLICY_VIOLATION,
        metadata={"rule": rule.value, "field": field_name, "policy_id": policy.id},
    )


# --- applying a policy to a request -------------------------------------------------------


def model_ids(request: CompletionRequest) -> list[tuple[str, ModelId]]:
    """(field, parsed id) of the model and each fallback; an unknown suffix is
    INVALID_ARGUMENT naming the field."""
    if not request.fallback_models and ":" not in request.model:
        return [("model", ModelId(request.model))]  # nearly every request: no suffix
    named = [("model", request.model)]
    named += [(f"fallback_models[{i}]", m) for i, m in enumerate(request.fallback_models)]
    parsed = []
    for field_name, model in named:
        try:
            parsed.append((field_name, parse_model_id(model)))
        except UnknownVariantError as exc:
            raise InvalidRequestError.for_field(
                field_name, f"unknown model variant ':{exc.suffix[:32]}'"
            ) from None
    return parsed


def apply_policy(
    request: CompletionRequest, policy: Policy, candidates: Sequence[ModelInfo]
) -> CompletionRequest:
    """``request`` narrowed to ``policy``: its provider preferences merged with the policy's,
    reasoning capped; raises ``PermissionDeniedError`` (POLICY_VIOLATION) for the first thing
    it asks that the policy forbids. ``candidates`` are the catalog entries of the model and
    its fallbacks, in that order."""
    ids = model_ids(request)
    for i, fallback in enumerate(request.fallback_models):
        if not policy.allows_model_fallback(fallback):
            raise violation(
                policy,
                Rule.FALLBACK_MODELS,
                f"fallback_models[{i}]",
                f"model '{quoted(fallback)}' may not be used as a fallback",
            )
    _check_plugins(request, policy, ids, candidates)
    _check_modalities(request, policy)
    reasoning = _reasoning(request, policy, ids, candidates)
    if request.provider is None:
        provider = policy.silent
    else:
        merged = merge_preferences(request.provider, policy)
        provider = None if merged.is_empty() else merged
    if provider is request.provider and reasoning is request.reasoning:
        return request  # the common case (no policy, no preferences): no copy
    return dataclasses.replace(request, provider=provider, reasoning=reasoning)


def _check_web_search(request: CompletionRequest, policy: Policy) -> None:
    """Web search costs money: as the ``web`` plugin it needs ``allowed_plugins``, as the
    ``openrouter:web_search`` server tool ``allowed_server_tools``."""
    search = request.web_search
    if search is None:
        return
    if search.mode is WebSearchMode.PLUGIN:
        rule, allowed, name = Rule.ALLOWED_PLUGINS, policy.allowed_plugins, WEB_PLUGIN
    else:
        rule, allowed, name = (
            Rule.ALLOWED_SERVER_TOOLS,
            policy.allowed_server_tools,
            WEB_SEARCH_TOOL,
        )
    if allowed is not None and name not in allowed:
        raise violation(policy, rule, "web_search.mode", f"web search ('{name}') is not allowed")


def _check_plugins(
    request: CompletionRequest,
    policy: Policy,
    ids: Sequence[tuple[str, ModelId]],
    candidates: Sequence[ModelInfo],
) -> None:
    _check_web_search(request, policy)
    allowed = policy.allowed_plugins
    if allowed is None:
        return
    for field_name, model_id in ids:
        if model_id.web_search and WEB_PLUGIN not in allowed:
            raise violation(
                policy,
                Rule.ALLOWED_PLUGINS,
                field_name,
                "the ':online' variant is web search (the 'web' plugin), which is not allowed",
            )
    if FILE_PARSER_PLUGIN in allowed:
        return
    parser = request.file_parser
    if parser is not None and parser.pdf_engine not in (None, PdfEngine.NATIVE):
        raise violation(
            policy, Rule.ALLOWED_PLUGINS, "file_parser", "the 'file-parser' plugin is not allowed"
        )
    # Without a native engine, OpenRouter parses a file for a model that cannot read it
    # itself, with its file-parser plugin (OCR by default, billed per page).
    native = parser is not None and parser.pdf_engine is PdfEngine.NATIVE
    if native or all(model.takes(Modality.FILE) for model in candidates):
        return
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.parts):
            if isinstance(part, FilePart):
                raise violation(
                    policy,
                    Rule.ALLOWED_PLUGINS,
                    f"messages[{i}].parts[{j}]",
                    "a file for a model that cannot read files is parsed by the 'file-parser' "
                    "plugin, which is not allowed (set file_parser.pdf_engine to "
                    "PDF_ENGINE_NATIVE for a model that reads files)",
                )


def _check_modalities(request: CompletionRequest, policy: Policy) -> None:
    allowed_in = policy.allowed_input_modalities
    if allowed_in is not None:
        for i, message in enumerate(request.messages):
            for j, part in enumerate(message.parts):
                modality = PART_MODALITY[type(part)]
                if modality not in allowed_in:
                    raise violation(
                        policy,
                        Rule.ALLOWED_INPUT_MODALITIES,
                        f"messages[{i}].parts[{j}]",
                        f"{modality.value} input is not allowed",
                    )
    for i, modality in enumerate(request.output_modalities):
        if not policy.allows_output(modality):
            raise violation(
                policy,
                Rule.ALLOWED_OUTPUT_MODALITIES,
                f"output_modalities[{i}]",
                f"{modality.value} output is not allowed",
            )


def effort_rank(effort: ReasoningEffort) -> int:
    return EFFORT_ORDER.index(effort)


def _reasoning(
    request: CompletionRequest,
    policy: Policy,
    ids: Sequence[tuple[str, ModelId]],
    candidates: Sequence[ModelInfo],
) -> ReasoningConfig | None:
    """The reasoning setting to send: the request's, checked against the cap; or, when the
    request leaves it open and the cap is below the default effort, the cap."""
    cap = policy.max_reasoning_effort
    config = request.reasoning
    if cap is None:
        return config
    over = effort_rank(cap) < effort_rank(DEFAULT_EFFORT)
    for field_name, model_id in ids:
        if model_id.thinking and over:
            raise violation(
                policy,
                Rule.MAX_REASONING_EFFORT,
                field_name,
                f"the ':thinking' variant reasons at {DEFAULT_EFFORT.value} effort, above "
                f"the maximum {cap.value}",
            )
    asked: ReasoningEffort | None = None
    if config is not None:
        if config.effort is not None:
            asked = config.effort
        elif config.enabled is True and config.max_tokens is None:
            asked = DEFAULT_EFFORT
        if config.max_tokens is not None and config.enabled is not False:
            budget = _budget(cap, request.sampling.max_tokens or 0)
            if config.max_tokens > budget:
                raise violation(
                    policy,
                    Rule.MAX_REASONING_EFFORT,
                    "reasoning.max_tokens",
                    f"a reasoning budget above {budget} tokens exceeds the maximum effort "
                    f"{cap.value} at this max_tokens",
                )
            return config
        if config.enabled is False:
            return config
    if asked is not None:
        if effort_rank(asked) > effort_rank(cap):
            field_name = "reasoning.effort" if config and config.effort else "reasoning.enabled"
            raise violation(
                policy,
                Rule.MAX_REASONING_EFFORT,
                field_name,
                f"effort {asked.value} is above the maximum {cap.value}",
            )
        return config
    if over and any(model.supports_reasoning for model in candidates):
        # A reasoning model left to itself reasons at its default (medium) effort.
        base = config or ReasoningConfig()
        return dataclasses.replace(base, effort=cap)
    return config


def _budget(cap: ReasoningEffort, max_tokens: int) -> int:
    if cap is ReasoningEffort.NONE:
        return 0
    return max(int(_EFFORT_SHARE[cap] * max_tokens), _MIN_REASONING_BUDGET)


def merge_preferences(asked: ProviderPreferences, policy: Policy) -> ProviderPreferences:
    """The provider object to send: the request's preferences within the policy's."""
    allowed, forbidden = policy.allowed_providers, policy.forbidden_providers
    for list_name in ("only", "order"):
        for i, slug in enumerate(getattr(asked, list_name) or ()):
            where = f"provider.{list_name}[{i}]"
            if allowed is not None and not covered(slug, allowed):
                raise violation(
                    policy, Rule.ALLOWED_PROVIDERS, where, f"provider '{slug}' is not allowed"
                )
            if covered(slug, forbidden):
                raise violation(
                    policy, Rule.FORBIDDEN_PROVIDERS, where, f"provider '{slug}' is forbidden"
                )
    only = asked.only if asked.only is not None else allowed
    ignore = tuple(dict.fromkeys((*asked.ignore, *forbidden)))

    allow_fallbacks = asked.allow_fallbacks
    if not policy.provider_fallbacks:
        if allow_fallbacks is True:
            raise violation(
                policy,
                Rule.PROVIDER_FALLBACKS,
                "provider.allow_fallbacks",
                "fallbacks to providers beyond the ordered ones are not allowed",
            )
        allow_fallbacks = False

    quantizations = asked.quantizations
    if policy.allowed_quantizations is not None:
        if quantizations is None:
            quantizations = policy.allowed_quantizations
        for i, quantization in enumerate(quantizations):
            if quantization not in policy.allowed_quantizations:
                raise violation(
                    policy,
                    Rule.ALLOWED_QUANTIZATIONS,
                    f"provider.quantizations[{i}]",
                    f"quantization {quantization.value} is not allowed",
                )

    prices: dict[str, Decimal | None] = {}
    for kind in MAX_PRICE_KINDS:
        mine: Decimal | None = getattr(asked.max_price, kind)
        ceiling: Decimal | None = getattr(policy.max_price, kind)
        if mine is not None and ceiling is not None and mine > ceiling:
            raise violation(
                policy,
                Rule.MAX_PRICE,
                f"provider.max_price.{kind}",
                f"above the policy's maximum {ceiling}",
            )
        prices[kind] = mine if mine is not None else ceiling

    data_collection = asked.data_collection
    if policy.data_collection is DataCollection.DENY:
        if data_collection is DataCollection.ALLOW:
            raise violation(
                policy,
                Rule.DATA_COLLECTION,
                "provider.data_collection",
                "providers that collect data are not allowed",
            )
        data_collection = DataCollection.DENY

    zdr = asked.zdr
    if policy.zdr:
        if zdr is False:
            raise violation(
                policy,
                Rule.ZDR,
                "provider.zdr",
                "zero data retention is required",
            )
        zdr = True

    return dataclasses.replace(
        asked,
        only=only,
        ignore=ignore,
        allow_fallbacks=allow_fallbacks,
        quantizations=quantizations,
        max_price=MaxPrice(**prices),
        data_collection=data_collection,
        zdr=zdr,
    )


_NO_PREFERENCES = ProviderPreferences()
_OPEN = Policy()
OPEN_POLICY = _OPEN
"""The policy of a caller for whom the callers file sets no rule."""


def apply_embedding_policy(request: EmbeddingRequest, policy: Policy) -> EmbeddingRequest:
    """An Embed request narrowed to ``policy``: the rules about where data goes and what it
    costs (providers, data collection, retention, quantizations, max price) and the input
    modalities apply as to chat; the rest (fallbacks, plugins, reasoning, outputs) have
    nothing to act on."""
    allowed_in = policy.allowed_input_modalities
    if allowed_in is not None:
        for i, item in enumerate(request.inputs):
            for j, part in enumerate(item.parts):
                modality = PART_MODALITY[type(part)]
                if modality not in allowed_in:
                    raise violation(
                        policy,
                        Rule.ALLOWED_INPUT_MODALITIES,
                        f"inputs[{i}].parts[{j}]",
                        f"{modality.value} input is not allowed",
                    )
    if request.provider is None:
        provider = policy.silent
    else:
        merged = merge_preferences(request.provider, policy)
        provider = None if merged.is_empty() else merged
    if provider is request.provider:
        return request
    return dataclasses.replace(request, provider=provider)


# --- what a caller sees in ListModels -----------------------------------------------------

_CHAT_OUTPUTS = frozenset({Modality.TEXT, Modality.IMAGE})
_REASONING_PARAMETERS = frozenset({"reasoning", "include_reasoning", "reasoning_effort"})


@dataclass(frozen=True, slots=True)
class ListedModel:
    """A catalog entry as one caller's policy lets it see the model."""

    model: ModelInfo
    price_capped: bool = False
    """Some price is the policy's ceiling rather than the catalog's (which is higher), or the
    price is variable and the policy caps it: at most the ceiling is paid per kind."""


def web_search_allowed(policy: Policy) -> bool:
    """Whether the caller may search the web at all: the ``web`` plugin (``:online``) or the
    web-search server tool."""
    plugins, tools = policy.allowed_plugins, policy.allowed_server_tools
    plugin = plugins is None or WEB_PLUGIN in plugins
    tool = tools is None or WEB_SEARCH_TOOL in tools
    return plugin or tool


def listed_model(policy: Policy, model: ModelInfo) -> ListedModel | None:
    """``model`` as the caller may use it, or None when its policy leaves nothing usable.

    Hidden: a model whose every chat output (text, images) the policy forbids, or that reads
    none of the kinds of input the policy allows. Shown: the modalities the policy allows;
    reasoning support only when the policy allows reasoning; a web-search price only when
    the caller may search; the prices the caller would pay at most: the catalog's, lowered
    to the policy's max price where that is lower (OpenRouter routes such calls only to
    providers within the ceiling; if none is, the call fails with NOT_FOUND, and costs
    nothing).
    """
    if policy is _OPEN:
        return ListedModel(model)
    inputs, outputs = model.input_modalities, model.output_modalities
    allowed_out = policy.allowed_output_modalities
    if outputs is not None and allowed_out is not None:
        chat = outputs & _CHAT_OUTPUTS
        if chat and not chat & allowed_out:
            return None
        outputs = frozenset(m for m in outputs if m not in _CHAT_OUTPUTS or m in allowed_out)
    allowed_in = policy.allowed_input_modalities
    if inputs is not None and allowed_in is not None:
        if not inputs & allowed_in:
            return None
        inputs = inputs & allowed_in
    parameters = model.supported_parameters
    if policy.max_reasoning_effort is ReasoningEffort.NONE:
        parameters = parameters - _REASONING_PARAMETERS
    pricing = model.pricing
    if pricing.variable:
        capped = not policy.max_price.is_empty()
    else:
        pricing = pricing.capped(policy.max_price)
        capped = pricing != model.pricing
    if pricing.web_search is not None and not web_search_allowed(policy):
        pricing = dataclasses.replace(pricing, web_search=None)
    shown = dataclasses.replace(
        model,
        input_modalities=inputs,
        output_modalities=outputs,
        supported_parameters=parameters,
        pricing=pricing,
    )
    return ListedModel(shown, capped)


# --- checking the answer -----------------------------------------------------------------


def answer_breach(policy: Policy, provider: str) -> Rule | None:
    """The rule an answer served by ``provider`` (as OpenRouter names it) breaks, if any.

    An answer names its provider, not the endpoint: a policy that allows only
    ``deepinfra/turbo`` accepts an answer from DeepInfra, and one that forbids only
    ``deepinfra/turbo`` does not object to one. Data collection and retention cannot be told
    from an answer; they rest on OpenRouter honouring ``data_collection`` and ``zdr``.
    """
    if not policy.restricts_providers or not provider:
        return None
    slug = provider_slug(provider)
    if policy.allowed_providers is not None and not any(
        entry.split("/", 1)[0] == slug for entry in policy.allowed_providers
    ):
        return Rule.ALLOWED_PROVIDERS
    if slug in policy.forbidden_providers:
        return Rule.FORBIDDEN_PROVIDERS
    return None


def breach_error(policy: Policy, rule: Rule, provider: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"the answer was served by a provider the caller's policy does not allow "
        f"(rule {rule.value}); it is withheld",
        reason=Reason.UPSTREAM_POLICY_BREACH,
        metadata={
            "rule": rule.value,
            "provider": provider_slug(provider)[:64],
            "policy_id": policy.id,
        },
    )


def describe(policies: Iterable[tuple[str, Policy]]) -> list[dict[str, Any]]:
    """Each caller's policy id and rules, for the start-up (and reload) log."""
    return [{"caller_id": cid, "policy_id": p.id, "rules": p.rules()} for cid, p in policies]
