"""The gateway's use cases: what happens between a caller's request and OpenRouter.

Model resolution and permission, validation and limits, the opaque end-user id, and the
accounting of each call. Transport-free: the gRPC servicer calls in, the backend port calls out.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

from service.domain.callers import Caller
from service.domain.completion import (
    CallStats,
    Completion,
    CompletionRequest,
    StreamEvent,
    StreamFinished,
    StreamStarted,
)
from service.domain.limits import RequestLimits, prepare
from service.domain.models import ModelInfo
from service.domain.ports import CompletionBackend
from service.domain.schemas import RegisteredSchema, SchemaRegistry
from service.domain.structured import StructuredCompleter, StructuredResult
from service.errors import InvalidRequestError, PermissionDeniedError


@dataclass(slots=True)
class CallRecord:
    """What one RPC did, filled in as it goes; becomes a ledger row and log line at the end."""

    request_id: str
    rpc: str
    started_at: float
    caller_id: str = ""
    end_user_id: str = ""
    requested_model: str = ""
    stats: CallStats = field(default_factory=CallStats)
    fallback_used: bool = False
    repair_used: bool = False


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

    async def get(self, model: str) -> ModelInfo | None:
        models = await self._backend.list_models()
        if models is not self._source:
            self._by_id = {m.id: m for m in models}
            self._source = models
        return self._by_id.get(model) or self._by_id.get(_base_id(model))

    async def all(self) -> Sequence[ModelInfo]:
        return await self._backend.list_models()


@dataclass(frozen=True, slots=True)
class GatewayPolicy:
    default_model: str
    allowed_models: tuple[str, ...] = ()
    """Global allow-list of globs; empty allows the whole catalog."""
    limits: RequestLimits = field(default_factory=RequestLimits)


class Gateway:
    def __init__(
        self,
        backend: CompletionBackend,
        policy: GatewayPolicy,
        *,
        schemas: SchemaRegistry,
        structured: StructuredCompleter | None = None,
    ) -> None:
        self._backend = backend
        self._policy = policy
        self.catalog = ModelCatalog(backend)
        self.schemas = schemas
        self._structured = structured or StructuredCompleter()

    @property
    def default_model(self) -> str:
        return self._policy.default_model

    def globally_allowed(self, model: str) -> bool:
        patterns = self._policy.allowed_models
        return not patterns or any(fnmatch.fnmatchcase(model, p) for p in patterns)

    def allowed_for(self, caller: Caller, model: str) -> bool:
        return self.globally_allowed(model) and caller.may_use(model)

    async def prepare(
        self,
        caller: Caller,
        request: CompletionRequest,
        *,
        end_user_id: str,
        record: CallRecord,
    ) -> tuple[CompletionRequest, ModelInfo]:
        """Validate, authorise and complete ``request``; also returns the primary model's info."""
        model = request.model or self._policy.default_model
        record.caller_id = caller.id
        record.end_user_id = end_user_id
        record.requested_model = model
        prepared = prepare(request, self._policy.limits, end_user_id=end_user_id)
        for field_name, candidate in [
            ("model", model),
            *((f"fallback_models[{i}]", m) for i, m in enumerate(request.fallback_models)),
        ]:
            if not self.allowed_for(caller, candidate):
                raise PermissionDeniedError(
                    f"{field_name}: model '{candidate}' is not allowed for this caller",
                    metadata={"model": candidate, "field": field_name},
                )
        info = await self.catalog.get(model)
        if info is None:
            raise InvalidRequestError.for_field("model", f"unknown model '{model}'")
        for i, fallback in enumerate(request.fallback_models):
            if await self.catalog.get(fallback) is None:
                raise InvalidRequestError.for_field(
                    f"fallback_models[{i}]", f"unknown model '{fallback}'"
                )
        prepared = dataclasses.replace(
            prepared, model=model, user=end_user_token(caller.id, end_user_id)
        )
        return prepared, info

    async def complete(
        self, request: CompletionRequest, *, deadline: float, record: CallRecord
    ) -> Completion:
        completion = await self._backend.complete(request, deadline=deadline, stats=record.stats)
        record.fallback_used = bool(request.fallback_models) and completion.model != request.model
        return completion

    async def stream(
        self, request: CompletionRequest, *, deadline: float, record: CallRecord
    ) -> AsyncGenerator[StreamEvent, None]:
        events = self._backend.stream(request, deadline=deadline, stats=record.stats)
        # aclosing: a cancelled caller must close the upstream request now, not at GC time.
        async with aclosing(events):
            async for event in events:
                if isinstance(event, StreamStarted):
                    record.fallback_used = (
                        bool(request.fallback_models) and event.model != request.model
                    )
                elif isinstance(event, StreamFinished) and event.usage is not None:
                    record.stats.usage = event.usage
                yield event

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
        request: CompletionRequest,
        schema: RegisteredSchema,
        model: ModelInfo,
        *,
        deadline: float,
        record: CallRecord,
    ) -> StructuredResult:
        attempts: list[CallStats] = []
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
        record.repair_used = result.repaired
        record.fallback_used = result.fallback_used or (
            bool(request.fallback_models) and result.completion.model != request.model
        )
        return result

    async def models_for(self, caller: Caller) -> list[ModelInfo]:
        models = await self.catalog.all()
        return sorted((m for m in models if self.allowed_for(caller, m.id)), key=lambda m: m.id)


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
