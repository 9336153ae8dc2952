"""Accounting of one RPC: what it may cost before the call, what it did cost after.

Before the call the worst case is reserved against the caller's quotas (a prompt estimate
plus ``max_tokens`` at the dearest candidate model's price), so concurrent requests cannot
overshoot a budget; afterwards the reservation is settled with the real usage and the RPC
becomes one ledger row.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from service.domain.completion import (
    PART_MODALITY,
    AudioPart,
    CacheTtl,
    CallStats,
    CompletionRequest,
    FilePart,
    ImagePart,
    MediaUrl,
    Modality,
    Part,
    PdfEngine,
    TextPart,
    Usage,
    VideoPart,
    cache_marks,
    part_bytes,
)
from service.domain.cost_kinds import CostUnits, split_cost
from service.domain.image_size import IMAGE_INPUT_TOKENS, image_dimensions, image_tokens_bound
from service.domain.limits import IMAGE_OUTPUT_TOKENS
from service.domain.models import ModelInfo, ModelPricing
from service.domain.providers import NO_MAX_PRICE
from service.domain.server_tools import OCR_MAX_PAGES, OCR_USD_PER_PAGE, WebSearch
from service.domain.usage import LedgerStore, UsageRecord
from service.domain.variants import UnknownVariantError, parse_model_id

# The prompt estimate is an upper bound, not a guess: a reservation that under-counts lets
# concurrent calls overshoot a budget. Without running the provider's tokenizer, the bound
# is the UTF-8 size. A token always stands for at least one byte of the text it was cut from:
# byte-level BPE (OpenAI's, Llama 3's, Qwen's, DeepSeek's) maps each token to one or more
# bytes, and SentencePiece with byte fallback (Llama 2, Mistral, Gemma) to one or more
# characters, or to one byte of a character outside its vocabulary. So bytes bound tokens in
# every script: English runs ~4 bytes a token, a CJK character (3 bytes) is 1-2 tokens, an
# emoji (4 bytes) 1-3, and a digit 1 byte for 1 token (Llama splits digits one a token),
# where the bound is tight. Anything lower would need the tokenizer.
# Normalisation can lengthen text before it is cut: Qwen's tokenizer applies NFC, and NFC
# turns some characters into two (U+0958 is 3 bytes, 6 in NFC), so text not in NFC counts
# as its NFC form. NFKC, which lengthens far more (U+FDFA: 3 bytes, 33), is not used by
# chat models: it is lossy (full-width CJK punctuation becomes ASCII), and a model must be
# able to write every character it reads.
_TOKENS_PER_MESSAGE = 8
"""The chat template's role markers and separators around each message (4-7 tokens in
OpenAI's, Llama 3's and Gemma's templates), and SentencePiece's dummy prefix."""
_TOKENS_PER_REQUEST = 8
"""Begin-of-text and the assistant header that opens the answer."""
_TOKENS_FOR_TOOLS = 512
"""The tool-use instructions a provider adds to the prompt when tools are offered (Anthropic
documents ~350 tokens for its current models), counted on top of the tools' own text."""


@dataclass(frozen=True, slots=True)
class MediaInputs:
    """A request's media parts by kind: how many, and their inline bytes (URLs count 0)."""

    images: int = 0
    image_bytes: int = 0
    files: int = 0
    file_bytes: int = 0
    audio: int = 0
    audio_bytes: int = 0
    videos: int = 0
    video_bytes: int = 0

    @classmethod
    def of(cls, request: CompletionRequest) -> MediaInputs:
        if not any(message.parts for message in request.messages):
            return _NO_MEDIA  # text only, as most calls are
        counts = dict.fromkeys(_MEDIA_KINDS, 0)
        sizes = dict.fromkeys(_MEDIA_KINDS, 0)
        for message in request.messages:
            for part in message.parts:
                kind = PART_MODALITY[type(part)]
                if kind in counts:
                    counts[kind] += 1
                    sizes[kind] += part_bytes(part)
        return cls(
            images=counts[Modality.IMAGE],
            image_bytes=sizes[Modality.IMAGE],
            files=counts[Modality.FILE],
            file_bytes=sizes[Modality.FILE],
            audio=counts[Modality.AUDIO],
            audio_bytes=sizes[Modality.AUDIO],
            videos=counts[Modality.VIDEO],
            video_bytes=sizes[Modality.VIDEO],
        )


_MEDIA_KINDS = (Modality.IMAGE, Modality.FILE, Modality.AUDIO, Modality.VIDEO)
_NO_MEDIA = MediaInputs()


@dataclass(slots=True)
class CallRecord:
    """What one RPC did, filled in as it goes; becomes a ledger row and log line at the end."""

    call_id: str
    """The gateway's own id of this RPC: the key of its ledger row."""
    request_id: str
    """The caller's ``x-request-id`` (or ``call_id`` when it sent none): correlation only."""
    rpc: str
    started_at: float
    """``loop.time()`` at the start, for durations."""
    started_wall: datetime = field(default_factory=lambda: datetime.now(UTC))
    caller_id: str = ""
    end_user_id: str = ""
    requested_model: str = ""
    stats: CallStats = field(default_factory=CallStats)
    fallback_used: bool = False
    repair_used: bool = False
    media_in: MediaInputs = field(default_factory=MediaInputs)
    """The caller's media parts by kind, once the request passed validation."""
    images_out: int = 0
    unsupported: dict[str, int] = field(default_factory=dict)
    """Outputs the contract could not carry, by kind, across all of the RPC's answers."""
    policy_id: str = ""
    """The id of the caller's policy that applied (``Policy.id``)."""
    policy_breach: str = ""
    """The policy rule the answer's provider breaks, when OpenRouter served against it."""
    refused_rule: str = ""
    """The policy rule a refused request asked beyond (``POLICY_VIOLATION``), and the field
    that asked (``refused_field``): the gateway's own names, for the log line."""
    refused_field: str = ""
    served_pricing: ModelPricing | None = None
    """The catalog prices of the model that served (set when the call is settled): what
    its cost is split by kind with (``split_cost``)."""
    finished: bool = False
    """Set once the RPC's outcome is accounted, so it is accounted exactly once."""
    interrupted: bool = False
    """Ended by a cancel, a deadline or the gateway's shutdown before it finished: its usage
    may never have arrived, so the row asks for reconciliation."""
    reason: str = ""
    """The ErrorInfo reason the call failed with (empty when it succeeded)."""
    peer: str = ""
    """The caller's address without its port; set only for a call refused before the caller
    was known (its row is aggregated per peer)."""


def estimate_prompt_tokens(request: CompletionRequest) -> int:
    """At least as many tokens as any provider's tokenizer makes of the prompt's text (see
    above); media parts are bounded per model by ``media_prompt_bound``."""
    tokens = _TOKENS_PER_REQUEST + _TOKENS_PER_MESSAGE * len(request.messages)
    for message in request.messages:
        tokens += utf8_bound(message.content)
        for part in message.parts:
            if isinstance(part, TextPart):
                tokens += utf8_bound(part.text)
        for detail in message.reasoning_details:
            # Reasoning sent back is read as prompt (encrypted data as its own tokens).
            for value in (detail.text, detail.summary, detail.data, detail.signature):
                tokens += utf8_bound(value or "")
        tokens += utf8_bound(message.name or "") + utf8_bound(message.tool_call_id or "")
        for call in message.tool_calls:
            tokens += utf8_bound(call.id) + utf8_bound(call.name) + utf8_bound(call.arguments)
    if request.tools:
        tokens += _TOKENS_FOR_TOOLS
    for tool in request.tools:
        tokens += utf8_bound(tool.name) + utf8_bound(tool.description)
        tokens += utf8_bound(_json_text(tool.parameters))
    if request.response_format is not None and request.response_format.schema is not None:
        tokens += utf8_bound(request.response_format.name)
        tokens += utf8_bound(_json_text(request.response_format.schema))
    return tokens


def utf8_bound(text: str) -> int:
    """UTF-8 bytes of ``text``, or of its NFC form where that is longer."""
    if text.isascii():  # most prompts: no encoding, no normalisation to pay for
        return len(text)
    size = len(text.encode("utf-8", "surrogatepass"))
    if not unicodedata.is_normalized("NFC", text):
        size = max(size, len(unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass")))
    return size


def _json_text(value: Mapping[str, Any]) -> str:
    # JSON as a provider renders it into the prompt: control characters escaped in 6 bytes
    # (repr() uses 4), each character at its UTF-8 size (ensure_ascii=False), and a space
    # after each separator, where templates that indent put their whitespace.
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass(frozen=True, slots=True)
class CostEstimate:
    tokens: int
    """Prompt bound plus the completion's."""
    usd: Decimal
    completion: int = 0
    """The completion tokens the caller allows (``max_tokens``)."""


# Media: what a part can cost, bounded without decoding it.
AUDIO_BYTES_PER_TOKEN = 16
"""Audio tokens follow duration (OpenAI 10, Gemini 32 a second); 16 bytes a token still
bounds audio compressed to 6 kbit/s at 32 tokens a second."""
VIDEO_BYTES_PER_TOKEN = 16
"""Gemini's ~300 tokens a second of video: bounded down to ~38 kbit/s of inline video."""
RESERVED_OUTPUT_IMAGES = 4
"""Images one answer is reserved for. OpenRouter's chat route has no image count; the
answers recorded hold one. An answer with more than four costs more than was reserved."""
_UNKNOWN_CONTEXT = 200_000
"""The prompt bound for unmeasurable media when a model's context length is unknown."""


@dataclass(frozen=True, slots=True)
class MediaBound:
    """What a request's media can add to its prompt on one model."""

    tokens: int = 0
    """Prompt tokens of images, audio and video (audio's at ``audio_tokens``)."""
    audio_tokens: int = 0
    images: int = 0
    unbounded: bool = False
    """A document, a video by URL, or an inline image whose header tells no size: its tokens
    cannot be bounded from what the gateway sees (a PDF page can be thousands of tokens in a
    few hundred bytes), so the prompt is bounded by the model's context length."""


def media_prompt_bound(request: CompletionRequest) -> MediaBound:
    return parts_bound(part for message in request.messages for part in message.parts)


def parts_bound(parts: Iterable[Part]) -> MediaBound:
    """What media parts (of messages, or of embedding inputs) can add to a prompt."""
    tokens = audio = images = 0
    unbounded = False
    for part in parts:
        if isinstance(part, ImagePart):
            images += 1
            source = part.source
            if isinstance(source, MediaUrl):
                # The gateway never fetches a URL, so its size is unknown (README, "Media in
                # the reservation"): the bound of an image that every provider scales down.
                tokens += IMAGE_INPUT_TOKENS
            elif (size := image_dimensions(source.data)) is not None:
                tokens += image_tokens_bound(*size)
            else:
                unbounded = True  # a size the header does not tell: bounded by the context
        elif isinstance(part, AudioPart):
            audio += math.ceil(len(part.data) / AUDIO_BYTES_PER_TOKEN)
        elif isinstance(part, VideoPart) and part_bytes(part):
            tokens += math.ceil(part_bytes(part) / VIDEO_BYTES_PER_TOKEN)
        elif isinstance(part, FilePart | VideoPart):
            unbounded = True
    return MediaBound(tokens + audio, audio, images, unbounded)


def _prompt_bound(text: int, media: MediaBound, model: ModelInfo) -> int:
    """A provider refuses a prompt longer than the context: that is the bound of last resort."""
    context = model.context_length
    prompt = text + media.tokens
    if media.unbounded:
        prompt = context or max(prompt, _UNKNOWN_CONTEXT)
    return min(prompt, context) if context else prompt


def _model_worst_case(
    request: CompletionRequest,
    model: ModelInfo,
    text: int,
    media: MediaBound,
    unknown_price: ModelPricing | None,
) -> CostEstimate:
    pricing = model.ceiling
    if pricing.variable:
        pricing = unknown_price or pricing
    # OpenRouter routes only to endpoints within the request's (policy-merged) max price:
    # where a ceiling is below the catalog's price, the ceiling bounds what the call costs.
    ceiling = request.provider.max_price if request.provider is not None else NO_MAX_PRICE
    pricing = pricing.capped(ceiling)
    prompt = _prompt_bound(text, media, model)
    completion = request.sampling.max_tokens or 0
    # Decimal arithmetic is dear per call: the media terms only when there are media.
    usd = pricing.image * media.images if media.images else Decimal(0)
    if media.audio_tokens:
        usd += max(pricing.audio - pricing.prompt, Decimal(0)) * min(media.audio_tokens, prompt)
    if media.unbounded:  # a file part (or a video by URL): the parser may OCR the files
        usd += ocr_files(request, model) * OCR_MAX_PAGES * OCR_USD_PER_PAGE
    search = request.web_search or _online(request)
    if search is not None:
        # Every search's results join the prompt (within the context), and a server tool's
        # every round of inference reads the whole prompt again and may write max_tokens.
        prompt += search.result_tokens()
        if model.context_length:
            prompt = min(prompt, model.context_length)
        prompt *= search.rounds
        completion *= search.rounds
        usd += search.uses * search.search_price(pricing.web_search)
    usd += _worst_price(pricing, prompt, completion, one_hour=_one_hour_cache(request))
    tokens = prompt + completion
    if Modality.IMAGE in request.output_modalities:
        per_image = pricing.image_output + IMAGE_OUTPUT_TOKENS * max(
            pricing.image_token, pricing.completion
        )
        usd += RESERVED_OUTPUT_IMAGES * per_image
        tokens += RESERVED_OUTPUT_IMAGES * IMAGE_OUTPUT_TOKENS
    return CostEstimate(tokens=tokens, usd=usd)


def worst_case(
    request: CompletionRequest,
    candidates: list[ModelInfo],
    *,
    unknown_price: ModelPricing | None = None,
) -> CostEstimate:
    """The most this request can cost: every candidate model might serve it, each at its
    catalog price or the request's max price where that is lower.

    A candidate priced ``variable`` (a router) may route to any model: it is priced at
    ``unknown_price``, the catalog's dearest price of each kind (capped the same way).
    """
    text = estimate_prompt_tokens(request)
    media = media_prompt_bound(request)
    completion = request.sampling.max_tokens or 0
    if not candidates:
        return CostEstimate(tokens=text + completion, usd=Decimal(0), completion=completion)
    each = [_model_worst_case(request, model, text, media, unknown_price) for model in candidates]
    return CostEstimate(
        tokens=max(e.tokens for e in each), usd=max(e.usd for e in each), completion=completion
    )


def ocr_files(request: CompletionRequest, model: ModelInfo) -> int:
    """The request's files OpenRouter's parser may read with ``mistral-ocr`` (billed per
    page) when ``model`` serves: all of them with that engine; with none named, all of them
    unless the model reads files itself (OpenRouter's default engine is ``mistral-ocr``). A
    router (variable price) may route to a model that cannot. ``native`` and
    ``cloudflare-ai`` cost no fee. A file whose annotation came back on an earlier turn is
    not parsed again, but which annotation is which file's is OpenRouter's to tell (by a hash
    of its own), so it is counted too."""
    engine = request.file_parser.pdf_engine if request.file_parser is not None else None
    if engine is None:
        reads_files = model.input_modalities is not None and Modality.FILE in model.input_modalities
        if reads_files and not model.pricing.variable:
            return 0
    elif engine is not PdfEngine.MISTRAL_OCR:
        return 0
    return sum(isinstance(part, FilePart) for message in request.messages for part in message.parts)


def _online(request: CompletionRequest) -> WebSearch | None:
    """A ``:online`` model (or fallback) is the web plugin at OpenRouter's defaults."""
    for name in (request.model, *request.fallback_models):
        try:
            if parse_model_id(name).web_search:
                return WebSearch()
        except UnknownVariantError:
            continue
    return None


def _one_hour_cache(request: CompletionRequest) -> bool:
    marks = cache_marks(request.messages, request.tools)
    if request.cache_control is not None:
        marks.append(request.cache_control)
    return any(mark.ttl is CacheTtl.ONE_HOUR for mark in marks)


def _worst_price(pricing: ModelPricing, prompt: int, completion: int, *, one_hour: bool) -> Decimal:
    """Every prompt token may be written to the prompt cache (automatic caching writes
    without any mark, at up to 1.25x; a 1-hour mark at the 1-hour price), and every
    generated token may be a reasoning token."""
    write = pricing.cache_write_1h if one_hour else None
    prompt_rate = pricing.prompt
    if pricing.cache_write is not None or write is not None:
        prompt_rate = max(prompt_rate, pricing.cache_write or Decimal(0), write or Decimal(0))
    completion_rate = pricing.completion
    if pricing.internal_reasoning is not None:
        completion_rate = max(completion_rate, pricing.internal_reasoning)
    return prompt_rate * prompt + completion_rate * completion + pricing.request


def usage_cost(usage: Usage, model: ModelInfo | None) -> Decimal:
    """OpenRouter's reported cost, exact; priced from the catalog when it reported none."""
    if usage.cost_usd is not None and math.isfinite(usage.cost_usd) and usage.cost_usd >= 0:
        # repr gives back the decimal OpenRouter wrote; Decimal(float) would not.
        return Decimal(repr(usage.cost_usd))
    if model is None:
        return Decimal(0)
    return model.pricing.cost(usage.prompt_tokens, usage.completion_tokens)


# A call ended by a deadline or a cancel may have generated tokens whose usage never arrived.
_CUT_SHORT = frozenset({"CANCELLED", "DEADLINE_EXCEEDED"})


def usage_record(record: CallRecord, status: str, ended_at: float) -> UsageRecord:
    stats = record.stats
    usage = stats.usage
    media = record.media_in
    cost: Decimal | None = None
    if usage is not None and usage.cost_usd is not None:
        cost = usage_cost(usage, None)
    ttft_ms = None
    if stats.first_token_at is not None:
        ttft_ms = max(0, round((stats.first_token_at - record.started_at) * 1000))
    upstream = _amount(usage.upstream_cost_usd) if usage else None
    return UsageRecord(
        call_id=record.call_id,
        request_id=record.request_id,
        time=record.started_wall,
        caller_id=record.caller_id,
        rpc=record.rpc,
        requested_model=record.requested_model,
        status=status,
        end_user_id=record.end_user_id,
        served_model=stats.served_model,
        provider=stats.provider,
        generation_id=stats.generation_id,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        reasoning_tokens=usage.reasoning_tokens if usage else 0,
        cached_tokens=usage.cached_tokens if usage else 0,
        cost_usd=cost,
        latency_ms=max(0, round((ended_at - record.started_at) * 1000)),
        ttft_ms=ttft_ms,
        retries=stats.retries,
        fallback_used=record.fallback_used,
        repair_used=record.repair_used,
        policy_id=record.policy_id,
        policy_breach=record.policy_breach,
        cancelled=(record.interrupted or status in _CUT_SHORT) and usage is None,
        prompt_image_tokens=usage.prompt_image_tokens if usage else 0,
        prompt_audio_tokens=usage.prompt_audio_tokens if usage else 0,
        prompt_video_tokens=usage.prompt_video_tokens if usage else 0,
        completion_image_tokens=usage.completion_image_tokens if usage else 0,
        completion_audio_tokens=usage.completion_audio_tokens if usage else 0,
        image_inputs=media.images,
        image_input_bytes=media.image_bytes,
        file_inputs=media.files,
        file_input_bytes=media.file_bytes,
        audio_inputs=media.audio,
        audio_input_bytes=media.audio_bytes,
        video_inputs=media.videos,
        video_input_bytes=media.video_bytes,
        images_out=record.images_out,
        unsupported_outputs=sum(record.unsupported.values()),
        unsupported_kinds=";".join(f"{k}={n}" for k, n in sorted(record.unsupported.items())),
        cache_write_tokens=usage.cache_write_tokens if usage else 0,
        web_search_requests=usage.web_search_requests if usage else 0,
        server_tool_calls=usage.server_tool_calls if usage else 0,
        upstream_cost_usd=upstream,
        tool_cost_usd=_tool_cost(cost, upstream, usage),
        byok=usage.byok if usage else False,
        costs=split_cost(
            cost,
            usage,
            record.served_pricing,
            CostUnits(
                media.images, record.images_out, media.files, embeddings=record.rpc == "Embed"
            ),
        ),
    )


def _amount(value: float | None) -> Decimal | None:
    """An amount OpenRouter reported, exact (see ``usage_cost``); None when unusable."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return Decimal(repr(value))


def _tool_cost(
    cost: Decimal | None, upstream: Decimal | None, usage: Usage | None
) -> Decimal | None:
    """OpenRouter's own fees (web searches, OCR pages): what it billed beyond the provider's
    inference. Known only when both amounts are reported and the key is OpenRouter's (with
    BYOK, the cost is OpenRouter's fee alone)."""
    if cost is None or upstream is None or usage is None or usage.byok or upstream > cost:
        return None
    return cost - upstream


def tool_cost(usage: Usage) -> Decimal | None:
    """``usage``'s OpenRouter fees (see ``_tool_cost``), as its ledger row books them."""
    cost = usage_cost(usage, None) if usage.cost_usd is not None else None
    return _tool_cost(cost, _amount(usage.upstream_cost_usd), usage)


class Durability(StrEnum):
    """When a call's status may leave the gateway, relative to its ledger row's commit."""

    BATCHED = "batched"
    """At once: the row is queued and committed with its batch a moment later (a crash of the
    process loses the rows of calls answered since the last commit)."""
    SYNC = "sync"
    """Once the row is committed (group commit: calls ending together share a transaction):
    a crash loses no row of a call whose status its caller received."""


class Accountant:
    """Turns each finished RPC into its ledger row (written in batches off the call path).

    Calls refused before their caller was known (a bad or missing key) are aggregated per
    minute, peer, RPC and reason: one row each would let a flood of strangers grow the ledger
    without bound, and would bill nobody."""

    def __init__(self, ledger: LedgerStore, durability: Durability = Durability.BATCHED) -> None:
        self._ledger = ledger
        self.durable = durability is Durability.SYNC
        """Whether a call's status waits for its row's commit (``finish`` returns what to
        await)."""

    def finish(
        self, record: CallRecord, status: str, ended_at: float, *, wait: bool = True
    ) -> Awaitable[None] | None:
        """The RPC is over: one ledger row, whatever its outcome; a call refused before its
        caller was known is counted in the aggregated rejected-call rows instead. With a
        durable accountant (and ``wait``), returns what is done once the row is committed;
        ``wait=False`` for a call nobody is waiting on (cancelled)."""
        if not record.caller_id:
            self._ledger.count_rejected(
                record.started_wall, record.peer, record.rpc, record.reason or status
            )
            return None
        row = usage_record(record, status, ended_at)
        if self.durable and wait:
            return self._ledger.commit(row)
        self._ledger.record(row)
        return None
