"""The async gRPC servicer: identity, conversion, error mapping and per-call accounting.

Each RPC runs the same frame: open a ``CallRecord``, authenticate, convert, call the domain,
convert back; any ``GatewayError`` ends the call with its rich status; the record is finished
with the final status code whatever happens (success, error, cancel, deadline).
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from datetime import UTC
from typing import TypeVar

import grpc
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from service.api import convert
from service.api.auth import Authenticator
from service.api.status import internal_status, status_code_for, to_rpc_status
from service.domain.accounting import CallRecord
from service.domain.callers import Caller
from service.domain.completion import StreamFinished
from service.domain.gateway import Gateway
from service.errors import GatewayError, StreamTruncatedError, UpstreamAuthError

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[object, object]
FinishHook = Callable[[CallRecord, grpc.StatusCode], None]
REQUEST_ID_KEY = "x-request-id"
# Where grpcio-status clients (rpc_status.from_call) look for the rich status.
GRPC_DETAILS_KEY = "grpc-status-details-bin"
_MAX_REQUEST_ID = 128
T = TypeVar("T")


def _request_id(metadata: object) -> str:
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            return value
    return uuid.uuid4().hex


class CompletionServicer(pb_grpc.CompletionServiceServicer):
    def __init__(
        self,
        gateway: Gateway,
        authenticator: Authenticator,
        *,
        on_finish: FinishHook | None = None,
    ) -> None:
        self._gateway = gateway
        self._auth = authenticator
        self._on_finish = on_finish

    # --- the frame shared by every RPC -------------------------------------------------

    def _open(self, context: Context, rpc: str) -> CallRecord:
        metadata = context.invocation_metadata()
        record = CallRecord(
            request_id=_request_id(metadata),
            rpc=rpc,
            started_at=asyncio.get_running_loop().time(),
        )
        context.set_trailing_metadata(((REQUEST_ID_KEY, record.request_id),))
        return record

    def _caller(self, context: Context, record: CallRecord) -> Caller:
        caller = self._auth.authenticate(
            context.invocation_metadata(), context.auth_context().get("x509_common_name")
        )
        record.caller_id = caller.id
        return caller

    def _deadline(self, context: Context) -> float:
        """The caller's deadline on the loop clock; infinity when it set none, so that the
        upstream client applies OPENROUTER_TIMEOUT_MS."""
        remaining = context.time_remaining()
        if remaining is None:
            return math.inf
        return asyncio.get_running_loop().time() + remaining

    async def _fail(self, context: Context, record: CallRecord, error: GatewayError) -> None:
        if isinstance(error, UpstreamAuthError):
            # The gateway's own OpenRouter key is wrong: the operator must act, loudly.
            log.error(
                "OpenRouter rejected the gateway's API key; check OPENROUTER_API_KEY",
                extra={"request_id": record.request_id, "reason": error.reason},
            )
        status = to_rpc_status(error, request_id=record.request_id)
        await context.abort(
            status_code_for(error),
            status.message,
            ((REQUEST_ID_KEY, record.request_id), (GRPC_DETAILS_KEY, status.SerializeToString())),
        )

    async def _crash(self, context: Context, record: CallRecord) -> None:
        log.exception("unexpected error", extra={"request_id": record.request_id})
        status = internal_status(record.request_id)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            status.message,
            ((REQUEST_ID_KEY, record.request_id), (GRPC_DETAILS_KEY, status.SerializeToString())),
        )

    def _close(self, context: Context, record: CallRecord, code: grpc.StatusCode) -> None:
        if code is grpc.StatusCode.CANCELLED:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
        self._gateway.finish(record, code.name, asyncio.get_running_loop().time())
        if self._on_finish is not None:
            self._on_finish(record, code)

    async def _unary(
        self,
        context: Context,
        rpc: str,
        handler: Callable[[Caller, CallRecord], Awaitable[T]],
    ) -> T:
        record = self._open(context, rpc)
        code = grpc.StatusCode.OK
        try:
            return await handler(self._caller(context, record), record)
        except GatewayError as error:
            code = status_code_for(error)
            await self._fail(context, record, error)
            raise  # unreachable: abort raises
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            await self._crash(context, record)
            raise
        finally:
            self._close(context, record, code)

    # --- RPCs ------------------------------------------------------------------------

    async def Complete(self, request: pb.CompleteRequest, context: Context) -> pb.CompleteResponse:  # type: ignore[override]
        async def handle(caller: Caller, record: CallRecord) -> pb.CompleteResponse:
            call = await self._gateway.prepare(
                caller,
                convert.completion_request(request),
                end_user_id=request.end_user_id,
                record=record,
            )
            completion = await self._gateway.complete(
                call, deadline=self._deadline(context), record=record
            )
            return convert.complete_response(completion)

        return await self._unary(context, "Complete", handle)

    async def StreamComplete(  # type: ignore[override]
        self, request: pb.StreamCompleteRequest, context: Context
    ) -> AsyncIterator[pb.StreamCompleteResponse]:
        record = self._open(context, "StreamComplete")
        code = grpc.StatusCode.OK
        try:
            caller = self._caller(context, record)
            call = await self._gateway.prepare(
                caller,
                convert.completion_request(request),
                end_user_id=request.end_user_id,
                record=record,
            )
            finished = False
            events = self._gateway.stream(call, deadline=self._deadline(context), record=record)
            async with aclosing(events):
                async for event in events:
                    # Each message is awaited onto the wire before the next upstream read: a
                    # slow reader holds back the upstream read instead of growing a buffer.
                    yield convert.stream_response(event)
                    finished = isinstance(event, StreamFinished)
            if not finished:
                raise StreamTruncatedError("the upstream stream ended without a finish")
        except GatewayError as error:
            code = status_code_for(error)
            await self._fail(context, record, error)
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            await self._crash(context, record)
        finally:
            self._close(context, record, code)

    async def ListModels(  # type: ignore[override]
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        async def handle(caller: Caller, record: CallRecord) -> pb.ListModelsResponse:
            models = await self._gateway.models_for(caller)
            return pb.ListModelsResponse(
                models=[convert.model(m) for m in models],
                default_model=self._gateway.default_model,
            )

        return await self._unary(context, "ListModels", handle)

    async def CompleteStructured(  # type: ignore[override]
        self, request: pb.CompleteStructuredRequest, context: Context
    ) -> pb.CompleteStructuredResponse:
        async def handle(caller: Caller, record: CallRecord) -> pb.CompleteStructuredResponse:
            base = convert.completion_request(request)
            if request.WhichOneof("schema") == "inline_schema":
                inline = request.inline_schema
                strict = inline.strict if inline.HasField("strict") else True
                schema = self._gateway.schema(inline=(inline.name, inline.schema_json, strict))
            else:
                schema = self._gateway.schema(name=request.schema_name)
            call = await self._gateway.prepare(
                caller, base, end_user_id=request.end_user_id, record=record
            )
            result = await self._gateway.complete_structured(
                call, schema, deadline=self._deadline(context), record=record
            )
            return convert.structured_response(result)

        return await self._unary(context, "CompleteStructured", handle)

    async def GetUsage(  # type: ignore[override]
        self, request: pb.GetUsageRequest, context: Context
    ) -> pb.GetUsageResponse:
        async def handle(caller: Caller, record: CallRecord) -> pb.GetUsageResponse:
            since = request.start_time.ToDatetime(UTC) if request.HasField("start_time") else None
            until = request.end_time.ToDatetime(UTC) if request.HasField("end_time") else None
            # The caller is the authenticated one: there is no way to name another caller.
            period_start, period_end, totals, quotas = await self._gateway.usage(
                caller, since, until
            )
            return convert.usage_response(caller.id, period_start, period_end, totals, quotas)

        return await self._unary(context, "GetUsage", handle)
