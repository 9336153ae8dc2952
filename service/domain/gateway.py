"""The gateway's use cases: what happens between a caller's request and OpenRouter.

Model resolution and permission, validation and limits, the opaque end-user id, and the
accounting of each call. Transport-free: the gRPC servicer calls in, the backend port calls out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import hashlib
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime

from service.domain.accounting import (
    CallRecord,
    CostEstimate,
    MediaInputs,
    usage_cost,
    worst_case,
)
from service.domain.callers import Caller
from service.domain.capabilities import check_capabilities, json_mode
from service.domain.completion import (
    CallStats,
    Completion,
    CompletionRequest,
    ContentDelta,
    OutputDelta,
    StreamEvent,
    StreamFinished,
    StreamStarted,
    add_unsupported,
)
from service.domain.embedding_rules import (
    check_embedding_model,
    embedding_worst_case,
    prepare_embedding,
)
from service.domain.embeddings import EmbeddingRequest, Embeddings
from service.domain.limits import RequestLimits, identifier_violations, prepare
from service.domain.models import ModelInfo, ModelPricing, dearest
from service.domain.policy import (
    AnswerCheck,
    ListedModel,
    answer_breach,
    apply_embedding_policy,
    apply_policy,
    breach_error,
    listed_model,
)
from service.domain.ports import CompletionBackend
from service.domain.quotas import (
    LeasePolicy,
    QuotaStatus,
    QuotaStore,
    Reservation,
    unknown_quota_status,
)
from service.domain.schemas import RegisteredSchema, SchemaRegistry
from service.domain.structured import (
    MAX_ATTEMPTS,
    RESPONSE_HEALING,
    StructuredCompleter,
    StructuredResult,
    build_request,
    check_json_object,
    choose_mode,
)
from service.domain.structured_stream import (
    StructuredEvent,
    StructuredFinished,
    structured_events,
)
from service.domain.usage import LedgerStore, UsageTotals
from service.errors import (
    InvalidRequestError,
    PermissionDeniedError,
    ServiceUnavailableError,
    quoted,
)

log = logging.getLogger(__name__)

_ALLOWED_CACHE_SIZE = 4096


def end_user_token(caller_id: str, end_user_id: str) -> str:
    """OpenRouter's ``user``: stable per (caller, end user), revealing neither.

    Abuse by one end user then isolates that end user upstream, not the whole gateway account.
    """
    digest = hashlib.sha256(f"{caller_id}\x00{end_user_id}".encode()).hexdigest()
    return f"llmgw-{digest[:32]}"


def _base_id(model: str) -> str:
    # Variant suffixes (`:free`, `:nitro`, …) route the same catalog model differently.
    return model.split(":", 1)[0]


class ModelCatalog:
    """Index over the backend's (cached) model list, rebuilt only when the list changes."""

    def __init__(self, backend: CompletionBackend) -> None:
        self._backend = backend
        self._source: Sequence[ModelInfo] | None = None
        self._by_id: Mapping[str, ModelInfo] = {}
        self._dearest = ModelPricing()

    async def _refresh(self) -> None:
        models = await self._backend.list_models()
        if models is not self._source:
            self._by_id = {m.id: m for m in models}
            # What a router may bill: the dearest price of each kind of any chat model.
            self._dearest = dearest(
                m.ceiling for m in models if not m.pricing.variable and not m.makes_embeddings
            )
            self._source = models

    async def get(self, model: str) -> ModelInfo | None:
        await self._refresh()
        return self._by_id.get(model) or self._by_id.get(_base_id(model))

    async def dearest(self) -> ModelPricing:
        """The highest price of each kind over the catalog's chat models (never variable)."""
        await self._refresh()
        return self._dearest

    async def all(self) -> Sequence[ModelInfo]:
        return await self._backend.list_models()


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """A validated, authorised request and the catalog entries of the models it may use."""

    caller: Caller
    request: CompletionRequest
    model: ModelInfo
    candidates: tuple[ModelInfo, ...]


@dataclass(frozen=True, slots=True)
class PreparedEmbedding:
    """A validated, authorised embedding request and its model's catalog entry."""

    caller: Caller
    request: EmbeddingRequest
    model: ModelInfo


@dataclass(frozen=True, slots=True)
class GatewayPolicy:
    default_model: str
    default_embedding_model: str = ""
    """Used when an Embed request leaves ``model`` empty; empty: ``model`` is required."""
    allowed_models: tuple[str, ...] = ()
    """Global allow-list of globs; empty allows the whole catalog."""
    limits: RequestLimits = field(default_factory=RequestLimits)
    leases: LeasePolicy = field(default_factory=LeasePolicy)


class Gateway:
    def __init__(
        self,
        backend: CompletionBackend,
        policy: GatewayPolicy,
        *,
        schemas: SchemaRegistry,
        quotas: QuotaStore,
        ledger: LedgerStore,
        structured: StructuredCompleter | None = None,
    ) -> None:
        self._backend = backend
        self._policy = policy
        self.catalog = ModelCatalog(backend)
        self.schemas = schemas
        self._quotas = quotas
        self._ledger = ledger
        self._structured = structured or StructuredCompleter()
        # Glob matching per call adds up; callers and policy are fixed for the process.
        self._allowed_cache: dict[tuple[str, str], bool] = {}

    def callers_changed(self) -> None:
        """The callers were reloaded: forget what was decided from their old allow-lists."""
        self._allowed_cache.clear()

    @property
    def default_model(self) -> str:
        return self._policy.default_model

    @property
    def default_embedding_model(self) -> str:
        return self._policy.default_embedding_model

    def globally_allowed(self, model: str) -> bool:
        patterns = self._policy.allowed_models
        return not patterns or any(fnmatch.fnmatchcase(model, p) for p in patterns)

    def allowed_for(self, caller: Caller, model: str, *, in_catalog: bool = True) -> bool:
        """Whether ``caller`` may use ``model`` (its allow-list and the global one).

        Only decisions about catalog models are cached: the cache holds at most
        ``_ALLOWED_CACHE_SIZE`` (caller id, catalog id) pairs, a few hundred kilobytes, and a
        caller sending made-up names cannot fill it (each is matched anew, then refused)."""
        key = (caller.id, model)
        allowed = self._allowed_cache.get(key)
        if allowed is None:
            allowed = self.globally_allowed(model) and caller.may_use(model)
            if in_catalog:
                if len(self._allowed_cache) >= _ALLOWED_CACHE_SIZE:
                    self._allowed_cache.clear()
                self._allowed_cache[key] = allowed
        return allowed

    async def prepare(
        self,
        caller: Caller,
        request: CompletionRequest,
        *,
        end_user_id: str,
        record: CallRecord,
        trace_headers: Mapping[str, str] | None = None,
    ) -> PreparedCall:
        """Validate, authorise and complete ``request`` (model, user, max_tokens, trimming,
        the trace context to send upstream)."""
        model = request.model or self._policy.default_model
        record.caller_id = caller.id
        # Stored only once they are known to be short: the row, the log line and the span
        # hold them. Too long, they are left out, and prepare() lists them with the rest.
        if not identifier_violations(request.model, request.fallback_models, end_user_id):
            record.end_user_id = end_user_id
            record.requested_model = model
        # Recorded first, so a refused call's row names the policy that refused it.
        record.policy_id = caller.policy.id
        prepared = prepare(
            request,
            self._policy.limits,
            end_user_id=end_user_id,
            model=model,
            user=end_user_token(caller.id, end_user_id),
            trace_headers=trace_headers or request.trace_headers,
        )
        named = [
            ("model", model),
            *((f"fallback_models[{i}]", m) for i, m in enumerate(request.fallback_models)),
        ]
        infos = [await self.catalog.get(candidate) for _, candidate in named]
        self._authorise(caller, named, infos)
        candidates: list[ModelInfo] = []
        for (field_name, candidate), found in zip(named, infos, strict=True):
            if found is None:
                raise InvalidRequestError.for_field(
                    field_name, f"unknown model '{quoted(candidate)}'"
                )
            candidates.append(found)
        info = candidates[0]
        check_capabilities(prepared, candidates)
        # After the capability check, which judges what the caller asked: the policy may add
        # what it did not (a reasoning cap), which a candidate that cannot reason ignores.
        prepared = apply_policy(prepared, caller.policy, candidates)
        record.media_in = MediaInputs.of(prepared)
        if json_mode(prepared):
            # Support varies per endpoint: route only to those that honour response_format.
            prepared = dataclasses.replace(prepared, require_parameters=True)
        return PreparedCall(caller, prepared, info, tuple(candidates))

    # --- proof upstream ---------------------------------------------------------------------

    def _check_provider(
        self, call: PreparedCall | PreparedEmbedding, provider: str, record: CallRecord
    ) -> None:
        """Flag (or, as the policy says, refuse) an answer served by a provider the caller's
        policy forbids: OpenRouter should not route there, but the gateway does not assume."""
        policy = call.caller.policy
        rule = answer_breach(policy, provider)
        if rule is None:
            return
        record.policy_breach = rule.value
        refused = policy.forbidden_provider_answers is AnswerCheck.REFUSE
        log.warning(
            "OpenRouter answered from a provider the caller's policy forbids",
            extra={
                "request_id": record.request_id,
                "caller_id": call.caller.id,
                "provider": provider[:64],
                "rule": rule.value,
                "policy_id": policy.id,
                "answer": "withheld" if refused else "returned",
            },
        )
        if refused:
            raise breach_error(policy, rule, provider)

    def _authorise(
        self,
        caller: Caller,
        named: Sequence[tuple[str, str]],
        infos: Sequence[ModelInfo | None],
    ) -> None:
        """Every (field, model) must be allowed for the caller (``infos``: their catalog
        entries, None for a name the catalog lacks)."""
        for (field_name, candidate), found in zip(named, infos, strict=True):
            if not self.allowed_for(caller, candidate, in_catalog=found is not None):
                raise PermissionDeniedError(
                    f"{field_name}: model '{quoted(candidate)}' is not allowed for this caller",
                    metadata={"model": quoted(candidate), "field": field_name},
                )

    async def prepare_embedding(
        self,
        caller: Caller,
        request: EmbeddingRequest,
        *,
        end_user_id: str,
        record: CallRecord,
        trace_headers: Mapping[str, str] | None = None,
    ) -> PreparedEmbedding:
        """Validate and authorise an Embed request, as ``prepare`` does a chat request."""
        model = request.model or self._policy.default_embedding_model
        record.caller_id = caller.id
        record.policy_id = caller.policy.id
        if not identifier_violations(request.model, (), end_user_id):
            record.end_user_id = end_user_id
            record.requested_model = model
        prepared = prepare_embedding(
            request,
            self._policy.limits,
            end_user_id=end_user_id,
            model=model,
            user=end_user_token(caller.id, end_user_id),
            trace_headers=trace_headers or request.trace_headers,
        )
        if not model:
            raise InvalidRequestError.for_field(
                "model", "must be set: the gateway has no default embedding model"
            )
        info = await self.catalog.get(model)
        self._authorise(caller, [("model", model)], [info])
        if info is None:
            raise InvalidRequestError.for_field("model", f"unknown model '{quoted(model)}'")
        check_embedding_model(prepared, info)
        prepared = apply_embedding_policy(prepared, caller.policy)
        return PreparedEmbedding(caller, prepared, info)

    # --- quotas ---------------------------------------------------------------------------

    async def _reserve(
        self, call: PreparedCall, request: CompletionRequest, deadline: float, *, attempts: int = 1
    ) -> Reservation:
        """Reserve the worst case of ``attempts`` upstream calls, leased for as long as they
        can run."""
        unknown = None
        if any(m.pricing.variable for m in call.candidates):
            unknown = await self.catalog.dearest()
        estimate = worst_case(request, list(call.candidates), unknown_price=unknown)
        return await self._reserve_estimate(call.caller, estimate, deadline, attempts=attempts)

    async def _reserve_estimate(
        self, caller: Caller, estimate: CostEstimate, deadline: float, *, attempts: int = 1
    ) -> Reservation:
        remaining = deadline - asyncio.get_running_loop().time()
        tokens = estimate.tokens * attempts
        tpm = caller.limits.tokens_per_minute
        if tpm is not None and tokens > tpm >= estimate.completion * attempts:
            # The prompt's bound (a token per byte, a context window for media) is far above
            # what most prompts use: a rate limit refuses only what the caller asked for
            # (max_tokens), and such a call takes the whole minute window instead.
            tokens = tpm
        return await self._quotas.reserve(
            caller,
            tokens=tokens,
            usd=estimate.usd * attempts,
            lease_s=self._policy.leases.lease_s(remaining, attempts=attempts),
        )

    def _keep_leased(self, reservation: Reservation) -> Callable[[], None]:
        """Renew the reservation's lease every ``renew_every_s`` until the returned stop is
        called: a stream without a deadline has no bound to lease it for."""
        loop = asyncio.get_running_loop()
        leases = self._policy.leases
        renewing: set[asyncio.Task[None]] = set()
        handle: asyncio.TimerHandle | None = None

        def renew() -> None:
            nonlocal handle
            lease_s = leases.lease_s(math.inf)
            task = loop.create_task(self._quotas.renew(reservation, lease_s=lease_s))
            renewing.add(task)
            task.add_done_callback(renewing.discard)
            handle = loop.call_later(leases.renew_every_s, renew)

        handle = loop.call_later(leases.renew_every_s, renew)

        def stop() -> None:
            if handle is not None:
                handle.cancel()

        return stop

    async def _settle(
        self, reservation: Reservation, call: PreparedCall | PreparedEmbedding, record: CallRecord
    ) -> None:
        usage = record.stats.usage
        try:
            if usage is not None:
                served = (
                    await self.catalog.get(record.stats.served_model)
                    if (record.stats.served_model)
                    else call.model
                )
                priced = served or call.model
                record.served_pricing = priced.pricing
                await self._quotas.settle(
                    reservation,
                    tokens=usage.total_tokens,
                    usd=usage_cost(usage, priced),
                )
            elif record.stats.generation_id or record.stats.relayed:
                # Something was generated but its usage never arrived (a cancelled stream):
                # keep the worst case booked; the ledger's reconciliation has the real cost.
                await self._quotas.settle(
                    reservation, tokens=reservation.tokens, usd=reservation.usd
                )
            else:
                # Failed before anything was generated: OpenRouter bills nothing.
                await self._quotas.release(reservation)
        except Exception:
            # Settling must never turn an answered call into an error; the store logs why.
            log.exception("settling a quota reservation failed")

    async def complete(
        self, call: PreparedCall, *, deadline: float, record: CallRecord
    ) -> Completion:
        request = call.request
        checked = json_mode(request)
        if checked and RESPONSE_HEALING not in request.plugins:
            # Repairs fences and trailing commas upstream, before the gateway's check.
            request = dataclasses.replace(request, plugins=(*request.plugins, RESPONSE_HEALING))
        reservation = await self._reserve(call, request, deadline)
        try:
            completion = await self._backend.complete(
                request, deadline=deadline, stats=record.stats
            )
        except BaseException:
            # Shielded: a caller's cancel must not leave the reservation booked.
            await asyncio.shield(self._settle(reservation, call, record))
            raise
        await self._settle(reservation, call, record)
        record.fallback_used = bool(request.fallback_models) and completion.model != request.model
        record.images_out += len(completion.images)
        add_unsupported(record.unsupported, completion.unsupported)
        self._check_provider(call, completion.provider, record)
        if checked:
            check_json_object(completion.content, completion.finish_reason)
        return completion

    async def embed(
        self, call: PreparedEmbedding, *, deadline: float, record: CallRecord
    ) -> Embeddings:
        estimate = embedding_worst_case(call.request, call.model)
        reservation = await self._reserve_estimate(call.caller, estimate, deadline)
        try:
            embeddings = await self._backend.embed(
                call.request, deadline=deadline, stats=record.stats
            )
        except BaseException:
            await asyncio.shield(self._settle(reservation, call, record))
            raise
        await self._settle(reservation, call, record)
        self._check_provider(call, embeddings.provider, record)
        return embeddings

    def stream(
        self, call: PreparedCall, *, deadline: float, record: CallRecord
    ) -> AsyncGenerator[StreamEvent, None]:
        """The answer's events; in JSON mode its end comes only after the whole answer was
        checked to be a JSON object."""
        events = self._stream(call, call.request, deadline=deadline, record=record)
        if not json_mode(call.request):
            return events
        return _checked_json(events)

    async def stream_structured(
        self,
        call: PreparedCall,
        schema: RegisteredSchema,
        *,
        deadline: float,
        record: CallRecord,
    ) -> AsyncGenerator[StructuredEvent, None]:
        """The JSON as it is generated, then the validated value (or SchemaValidationError)."""
        mode = choose_mode(call.model)
        request = build_request(
            call.request,
            schema,
            mode,
            default_temperature=self._structured.default_temperature,
            stream=True,
        )
        record.repair_used = False
        events = self._stream(call, request, deadline=deadline, record=record)
        async with aclosing(events):
            async for event in structured_events(events, schema, mode):
                if isinstance(event, StructuredFinished):
                    record.repair_used = event.extracted
                    record.fallback_used = record.fallback_used or event.fallback_used
                yield event

    async def _stream(
        self,
        call: PreparedCall,
        request: CompletionRequest,
        *,
        deadline: float,
        record: CallRecord,
    ) -> AsyncGenerator[StreamEvent, None]:
        reservation = await self._reserve(call, request, deadline)
        stop_renewing = None if math.isfinite(deadline) else self._keep_leased(reservation)
        try:
            events = self._backend.stream(request, deadline=deadline, stats=record.stats)
            # aclosing: a cancelled caller must close the upstream request now, not at GC time.
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, StreamStarted):
                        record.fallback_used = (
                            bool(request.fallback_models) and event.model != request.model
                        )
                        # Before `start` goes out: a refused stream relays nothing.
                        self._check_provider(call, event.provider, record)
                    elif isinstance(event, OutputDelta):
                        record.images_out += len(event.images)
                    elif isinstance(event, StreamFinished):
                        if event.usage is not None:
                            record.stats.usage = event.usage
                        add_unsupported(record.unsupported, event.unsupported)
                    yield event
        finally:
            if stop_renewing is not None:
                stop_renewing()
            await asyncio.shield(self._settle(reservation, call, record))

    def schema(
        self, *, name: str | None = None, inline: tuple[str, str, bool] | None = None
    ) -> RegisteredSchema:
        """A registered schema by exact name, or a caller's inline (name, JSON text, strict)."""
        if inline is not None:
            schema = self.schemas.compile_inline(*inline)
            field_name = "inline_schema.schema_json"
        elif name:
            schema = self.schemas.get(name)
            field_name = "schema_name"
        else:
            raise InvalidRequestError.for_field("schema", "set schema_name or inline_schema")
        if schema.schema.get("type") != "object":
            # Providers want an object at the root, and the answer is returned as a Struct.
            raise InvalidRequestError.for_field(
                field_name, 'the root must be an object schema ("type": "object")'
            )
        return schema

    async def complete_structured(
        self,
        call: PreparedCall,
        schema: RegisteredSchema,
        *,
        deadline: float,
        record: CallRecord,
    ) -> StructuredResult:
        request = call.request
        model = call.model
        attempts: list[CallStats] = []
        # A re-ask may double the cost: reserve for both attempts up front.
        reservation = await self._reserve(call, request, deadline, attempts=MAX_ATTEMPTS)
        try:
            result = await self._structured.complete(
                request,
                schema,
                model,
                deadline=deadline,
                backend=self._backend,
                attempt_stats=attempts,
            )
        finally:
            _merge_attempts(record.stats, attempts)
            # Set here, not after success: a re-ask that still failed was a repair, and billed.
            record.repair_used = len(attempts) > 1
            await asyncio.shield(self._settle(reservation, call, record))
        record.repair_used = result.repaired
        add_unsupported(record.unsupported, result.completion.unsupported)
        record.fallback_used = result.fallback_used or (
            bool(request.fallback_models) and result.completion.model != request.model
        )
        self._check_provider(call, result.completion.provider, record)
        return result

    async def usage(
        self, caller: Caller, since: datetime | None, until: datetime | None
    ) -> tuple[datetime, datetime, UsageTotals, QuotaStatus]:
        """The caller's own totals over [since, until) (default: today so far, UTC)."""
        now = datetime.now(UTC)
        until = until or now
        since = since or now.replace(hour=0, minute=0, second=0, microsecond=0)
        if until <= since:
            raise InvalidRequestError.for_field("end_time", "must be after start_time")
        # Read-your-writes: the caller's own calls just before this one are counted.
        await self._ledger.flush()
        totals = await self._ledger.totals(caller.id, since, until)
        limits = caller.limits
        if (
            limits.requests_per_minute is None
            and limits.tokens_per_minute is None
            and limits.usd_per_day is None
        ):
            # Nothing to report, and no reason to depend on the quota store being up.
            return since, until, totals, QuotaStatus(caller.id, None, None, None)
        try:
            quotas = await self._quotas.status(caller)
        except ServiceUnavailableError:
            # The totals come from the ledger: report them, and the limits without their
            # usage, whatever the failure policy (it decides admissions, not reads).
            quotas = unknown_quota_status(caller, time.time())
        return since, until, totals, quotas

    async def models_for(self, caller: Caller) -> list[ListedModel]:
        """The models the caller may use, as its policy lets it see them, sorted by id."""
        models = await self.catalog.all()
        listed = []
        for model in sorted(models, key=lambda m: m.id):
            if not self.allowed_for(caller, model.id):
                continue
            shown = listed_model(caller.policy, model)
            if shown is not None:
                listed.append(shown)
        return listed


async def _checked_json(
    events: AsyncGenerator[StreamEvent, None],
) -> AsyncGenerator[StreamEvent, None]:
    """A JSON-mode stream: relayed as it comes; its end only once the whole answer proved to
    be a JSON object (``SchemaValidationError`` instead)."""
    pieces: list[str] = []
    async with aclosing(events):
        async for event in events:
            if isinstance(event, ContentDelta):
                pieces.append(event.text)
            elif isinstance(event, OutputDelta):
                pieces.append(event.content)
            elif isinstance(event, StreamFinished):
                check_json_object("".join(pieces), event.finish_reason)
            yield event


def _merge_attempts(total: CallStats, attempts: list[CallStats]) -> None:
    """One ledger row for an RPC that made several upstream calls (a structured re-ask)."""
    for stats in attempts:
        total.attempts += stats.attempts
        total.retries += stats.retries
        total.upstream_seconds += stats.upstream_seconds
        if stats.usage is not None:
            total.usage = stats.usage if total.usage is None else total.usage + stats.usage
        if stats.generation_id:
            total.generation_id = stats.generation_id
            total.served_model = stats.served_model
            total.provider = stats.provider
        if total.first_token_at is None:
            total.first_token_at = stats.first_token_at
