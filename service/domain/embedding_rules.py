"""The rules of an Embed call: what a valid request is, which models serve it, what it may cost.

Checked before anything goes upstream, like ``limits`` and ``capabilities`` for chat: every
bad field named at once (INVALID_ARGUMENT), a model that cannot serve the request refused
with UNSUPPORTED_FEATURE, and the worst case reserved against the caller's quotas.
"""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from typing import Any

from service.domain.accounting import CostEstimate, parts_bound, utf8_bound
from service.domain.completion import PART_MODALITY, Modality, TextPart
from service.domain.embeddings import EmbeddingInput, EmbeddingRequest
from service.domain.limits import MAX_END_USER_ID_CHARS, RequestLimits, check_media_part
from service.domain.models import ModelInfo
from service.domain.providers import NO_MAX_PRICE, preference_violations
from service.errors import FieldViolation, InvalidRequestError, UnsupportedFeatureError

MAX_DIMENSIONS = 16_384
"""Far above any embedding model's size (3,072 for OpenAI's largest, 4,096 for Qwen3's), and
a bound on what a batch's answer can weigh."""
_INPUT_TYPE = re.compile(r"^[a-z0-9_-]{1,64}$")

_TOKENS_PER_INPUT = 16
"""Around each input, the special tokens and the instruction prefix some models add for an
``input_type`` (``search_query: ``); the text itself is bounded as in ``accounting``."""


def prepare_embedding(
    request: EmbeddingRequest,
    limits: RequestLimits,
    *,
    end_user_id: str = "",
    **updates: Any,
) -> EmbeddingRequest:
    """Validate ``request`` and return it with ``updates`` (model, user, trace headers)
    applied; ``InvalidRequestError`` lists every bad field at once."""
    violations = list(request.decode_violations)
    inputs = request.inputs
    if not inputs:
        violations.append(FieldViolation("inputs", "must hold at least one input"))
    elif len(inputs) > limits.max_embedding_inputs:
        violations.append(FieldViolation("inputs", f"at most {limits.max_embedding_inputs} inputs"))
    else:
        _check_inputs(inputs, limits, violations)
    if request.dimensions is not None and not 1 <= request.dimensions <= MAX_DIMENSIONS:
        violations.append(FieldViolation("dimensions", f"must be in [1, {MAX_DIMENSIONS}]"))
    if request.input_type and not _INPUT_TYPE.match(request.input_type):
        violations.append(FieldViolation("input_type", "must be 1 to 64 of a-z, 0-9, _ and -"))
    if len(end_user_id) > MAX_END_USER_ID_CHARS:
        violations.append(
            FieldViolation("end_user_id", f"at most {MAX_END_USER_ID_CHARS} characters")
        )
    if request.provider is not None:
        violations.extend(preference_violations(request.provider))
    if violations:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise InvalidRequestError(f"{first.field}: {first.description}{more}", violations)
    return dataclasses.replace(request, **updates)


def _check_inputs(
    inputs: tuple[EmbeddingInput, ...], limits: RequestLimits, violations: list[FieldViolation]
) -> None:
    total = 0
    media = 0
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        chars = item.text_chars
        total += chars
        if chars > limits.max_message_chars:
            violations.append(
                FieldViolation(where, f"longer than {limits.max_message_chars} characters")
            )
        if item.text and item.parts:
            violations.append(FieldViolation(f"{where}.parts", "set text or parts, not both"))
        elif not item.text and not item.parts:
            violations.append(FieldViolation(f"{where}.text", "must not be empty"))
        if len(item.parts) > limits.max_parts_per_message:
            violations.append(
                FieldViolation(f"{where}.parts", f"at most {limits.max_parts_per_message} parts")
            )
        for j, part in enumerate(item.parts):
            media += check_media_part(part, f"{where}.parts[{j}]", limits, violations)
    if total > limits.max_total_chars:
        violations.append(
            FieldViolation("inputs", f"longer than {limits.max_total_chars} characters in all")
        )
    if media > limits.max_media_bytes:
        violations.append(
            FieldViolation("inputs", f"more than {limits.max_media_bytes} bytes of media in all")
        )


def check_embedding_model(request: EmbeddingRequest, model: ModelInfo) -> None:
    """The model must make embeddings and read every part's kind; else UNSUPPORTED_FEATURE
    naming the field, before anything is sent upstream."""
    if not model.makes_embeddings:
        raise UnsupportedFeatureError(
            f"model: '{model.id}' is not an embedding model (ListModels marks those with "
            "output modality embeddings)",
            metadata={"field": "model", "model": model.id},
        )
    for i, item in enumerate(request.inputs):
        for j, part in enumerate(item.parts):
            modality = PART_MODALITY[type(part)]
            if modality is not Modality.TEXT and not model.takes(modality):
                where = f"inputs[{i}].parts[{j}]"
                raise UnsupportedFeatureError(
                    f"{where}: model '{model.id}' does not take {modality.value} input",
                    metadata={"field": where, "model": model.id, "modality": modality.value},
                )


def embedding_worst_case(request: EmbeddingRequest, model: ModelInfo) -> CostEstimate:
    """The most the call can cost: text at its token bound, media parts at the chat RPCs'
    bounds (a document bounded only by the context length), all at the prompt price, and
    each image at the per-image price on top."""
    tokens = 0
    overhead = _TOKENS_PER_INPUT + utf8_bound(request.input_type)
    for item in request.inputs:
        tokens += overhead + utf8_bound(item.text)
        tokens += sum(utf8_bound(p.text) for p in item.parts if isinstance(p, TextPart))
    media = parts_bound(part for item in request.inputs for part in item.parts)
    tokens += media.tokens
    if media.unbounded:
        tokens = max(tokens, model.context_length * len(request.inputs))
    # Only providers within the (policy-merged) max price serve: the ceiling bounds the cost.
    ceiling = request.provider.max_price if request.provider is not None else NO_MAX_PRICE
    pricing = model.ceiling.capped(ceiling)
    usd = pricing.prompt * tokens + pricing.image * media.images + pricing.request
    return CostEstimate(tokens=tokens, usd=max(usd, Decimal(0)))
