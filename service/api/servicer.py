"""The async gRPC servicer: what each RPC does between protobuf and the domain.

Every RPC runs in the one frame of ``service.api.frame`` (identity, parsing, status, accounting,
shutdown); the methods here only convert and call the domain. They are registered by
``register`` with no request deserializer and no response serializer: the frame parses the
bytes itself, after authentication, so undecodable input gets a status of its own, and
serializes each answer, so one too large to send gets a status (and row) of its own.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from llmgateway.v1 import completion_service_pb2 as pb

from service.api import convert, convert_embed
from service.api.auth import Authenticator
from service.api.convert_structured_stream import structured_stream_response
from service.api.frame import REQUEST_ID_KEY, Call, CallFrame, Context, FinishHook, unary_method
from service.domain.accounting import Accountant
from service.domain.completion import StreamEvent, StreamFinished
from service.domain.gateway import Gateway
from service.domain.schemas import RegisteredSchema
from service.domain.structured_stream import StructuredEvent, StructuredFinished
from service.errors import InvalidRequestError, StreamTruncatedError
from service.telemetry.core import Telemetry
from service.telemetry.rpc import RpcTelemetry

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CompletionService"].full_name
E = TypeVar("E")
Handler = Callable[[Call, Any, Context[bytes]], Awaitable[Message]]
"""What a unary RPC does between its parsed request and its answer (``_complete`` and the rest)."""

__all__ = ["SERVICE_NAME", "CompletionServicer", "FinishHook", "register"]


class CompletionServicer:
    """``llmgateway.v1.CompletionService``: what each RPC does. The streams are methods that take
    the request's bytes and their context and write with ``context.write``; each unary RPC is a
    handler (``_complete`` and the rest) that ``register`` wraps with ``unary_method``."""

    def __init__(
        self,
        gateway: Gateway,
        authenticator: Authenticator,
        *,
        accountant: Accountant,
        on_finish: FinishHook | None = None,
        telemetry: Telemetry | None = None,
        address: tuple[str | None, int | None] = (None, None),
        max_send_bytes: int | None = None,
    ) -> None:
        """``address`` (host, port) is where this servicer is served, for span attributes;
        ``max_send_bytes`` the server's ``grpc.max_send_message_length``."""
        self._gateway = gateway
        host, port = address
        self.frame = CallFrame(
            authenticator,
            accountant,
            RpcTelemetry(
                telemetry if telemetry is not None else Telemetry(),
                SERVICE_NAME,
                host=host,
                port=port,
            ),
            on_finish=on_finish,
            max_send_bytes=max_send_bytes,
        )

    async def drain(self, grace_s: float) -> bool:
        """Refuse new calls and wait up to ``grace_s`` for those in flight (``CallFrame.drain``)."""
        return await self.frame.drain(grace_s)

    async def cut(self) -> int:
        """End the calls still running, each with its status and row (``CallFrame.cut``)."""
        return await self.frame.cut()

    # --- RPCs ------------------------------------------------------------------------

    async def StreamComplete(self, raw: bytes, context: Context[bytes]) -> None:
        await self.frame.run(
            "StreamComplete", raw, context, pb.StreamCompleteRequest.FromString, self._stream
        )

    async def StreamCompleteStructured(self, raw: bytes, context: Context[bytes]) -> None:
        await self.frame.run(
            "StreamCompleteStructured",
            raw,
            context,
            pb.StreamCompleteStructuredRequest.FromString,
            self._stream_structured,
        )

    # --- what each RPC does ----------------------------------------------------------

    async def _complete(
        self, call: Call, request: pb.CompleteRequest, context: Context[bytes]
    ) -> pb.CompleteResponse:
        prepared = await self._gateway.prepare(
            call.caller,
            convert.completion_request(request),
            end_user_id=request.end_user_id,
            record=call.record,
            trace_headers=call.observed.trace,
        )
        call.observed.model = prepared.model.id
        completion = await self._gateway.complete(
            prepared, deadline=call.deadline, record=call.record
        )
        call.observed.finish_reason = completion.finish_reason.value
        return convert.complete_response(completion)

    async def _stream(
        self,
        call: Call,
        request: pb.StreamCompleteRequest,
        context: Context[bytes],
    ) -> None:
        record = call.record
        prepared = await self._gateway.prepare(
            call.caller,
            convert.completion_request(request),
            end_user_id=request.end_user_id,
            record=record,
            trace_headers=call.observed.trace,
        )
        call.observed.model = prepared.model.id
        events = self._gateway.stream(prepared, deadline=call.deadline, record=record)
        await _relay(call, context, events, convert.stream_response, _stream_finish)

    async def _stream_structured(
        self,
        call: Call,
        request: pb.StreamCompleteStructuredRequest,
        context: Context[bytes],
    ) -> None:
        schema = self._schema_of(request)
        prepared = await self._gateway.prepare(
            call.caller,
            convert.completion_request(request),
            end_user_id=request.end_user_id,
            record=call.record,
            trace_headers=call.observed.trace,
        )
        call.observed.model = prepared.model.id
        events = self._gateway.stream_structured(
            prepared, schema, deadline=call.deadline, record=call.record
        )
        await _relay(call, context, events, structured_stream_response, _structured_finish)

    def _schema_of(
        self, request: pb.CompleteStructuredRequest | pb.StreamCompleteStructuredRequest
    ) -> RegisteredSchema:
        if request.WhichOneof("schema") == "inline_schema":
            inline = request.inline_schema
            strict = inline.strict if inline.HasField("strict") else True
            return self._gateway.schema(inline=(inline.name, inline.schema_json, strict))
        return self._gateway.schema(name=request.schema_name)

    async def _structured(
        self,
        call: Call,
        request: pb.CompleteStructuredRequest,
        context: Context[bytes],
    ) -> pb.CompleteStructuredResponse:
        base = convert.completion_request(request)
        schema = self._schema_of(request)
        prepared = await self._gateway.prepare(
            call.caller,
            base,
            end_user_id=request.end_user_id,
            record=call.record,
            trace_headers=call.observed.trace,
        )
        call.observed.model = prepared.model.id
        result = await self._gateway.complete_structured(
            prepared, schema, deadline=call.deadline, record=call.record
        )
        call.observed.finish_reason = result.completion.finish_reason.value
        return convert.structured_response(result)

    async def _list_models(
        self, call: Call, request: pb.ListModelsRequest, context: Context[bytes]
    ) -> pb.ListModelsResponse:
        inputs, outputs = convert.model_filter(request)
        models = await self._gateway.models_for(call.caller)
        if inputs or outputs:
            models = [m for m in models if m.model.lists(inputs, outputs)]
        return pb.ListModelsResponse(
            models=[convert.model(m.model, price_capped=m.price_capped) for m in models],
            default_model=self._gateway.default_model,
            default_embedding_model=self._gateway.default_embedding_model,
        )

    async def _usage(
        self, call: Call, request: pb.GetUsageRequest, context: Context[bytes]
    ) -> pb.GetUsageResponse:
        since = _time(request, "start_time")
        until = _time(request, "end_time")
        # The caller is the authenticated one: there is no way to name another caller.
        period_start, period_end, totals, quotas = await self._gateway.usage(
            call.caller, since, until
        )
        return convert.usage_response(call.caller.id, period_start, period_end, totals, quotas)

    async def _embed(
        self, call: Call, request: pb.EmbedRequest, context: Context[bytes]
    ) -> pb.EmbedResponse:
        prepared = await self._gateway.prepare_embedding(
            call.caller,
            convert_embed.embedding_request(request),
            end_user_id=request.end_user_id,
            record=call.record,
            trace_headers=call.observed.trace,
        )
        call.observed.model = prepared.model.id
        result = await self._gateway.embed(prepared, deadline=call.deadline, record=call.record)
        return convert_embed.embed_response(result, prepared.request.encoding)


async def _relay(
    call: Call,
    context: Context[bytes],
    events: AsyncGenerator[E, None],
    to_message: Callable[[E], Message],
    finish_of: Callable[[E], str | None],
) -> None:
    """Write a stream's events as they come. ``finish_of`` is the finish reason of a stream's
    last event (None for every other event): a stream that ends without one was cut."""
    record = call.record
    finished = False
    headers_sent = False
    async with aclosing(events):
        async for event in events:
            if not headers_sent:
                # The request id in the headers, so a caller has it while it reads; a stream
                # that fails before its first message has it in the trailers.
                await context.send_initial_metadata(((REQUEST_ID_KEY, record.request_id),))
                headers_sent = True
            # Each message is awaited onto the wire before the next upstream read: a slow
            # reader holds back the upstream read instead of growing a buffer. One too large
            # to send ends the stream (the upstream request closed as this generator is).
            await context.write(call.encode(to_message(event)))
            reason = finish_of(event)
            finished = reason is not None
            if reason is not None:
                call.observed.finish_reason = reason
    if not finished:
        raise StreamTruncatedError("the upstream stream ended without a finish")


def _stream_finish(event: StreamEvent) -> str | None:
    return event.finish_reason.value if isinstance(event, StreamFinished) else None


def _structured_finish(event: StructuredEvent) -> str | None:
    return event.finish_reason.value if isinstance(event, StructuredFinished) else None


def _time(request: pb.GetUsageRequest, field: Literal["start_time", "end_time"]) -> datetime | None:
    """A request's Timestamp field as a UTC datetime; None when unset.

    Any value a Timestamp can hold on the wire may arrive (seconds far past year 9999, nanos
    out of range); what ``datetime`` cannot represent is the caller's error, not ours."""
    if not request.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(request, field)
    try:
        return stamp.ToDatetime(UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidRequestError.for_field(
            field, "must be a valid time from 0001-01-01 to 9999-12-31 (UTC)"
        ) from None


def register(servicer: CompletionServicer, server: grpc.aio.Server) -> None:
    """Serve ``servicer``'s methods on ``server``, taking requests and giving answers as bytes
    (the frame parses and serializes them: see the module)."""
    frame = servicer.frame
    unary: dict[str, tuple[Callable[[bytes], Message], Handler]] = {
        "Complete": (pb.CompleteRequest.FromString, servicer._complete),
        "CompleteStructured": (pb.CompleteStructuredRequest.FromString, servicer._structured),
        "ListModels": (pb.ListModelsRequest.FromString, servicer._list_models),
        "GetUsage": (pb.GetUsageRequest.FromString, servicer._usage),
        "Embed": (pb.EmbedRequest.FromString, servicer._embed),
    }
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        name: grpc.unary_unary_rpc_method_handler(unary_method(frame, name, parse, handler))
        for name, (parse, handler) in unary.items()
    }
    handlers["StreamComplete"] = grpc.unary_stream_rpc_method_handler(servicer.StreamComplete)
    handlers["StreamCompleteStructured"] = grpc.unary_stream_rpc_method_handler(
        servicer.StreamCompleteStructured
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # Registered methods are matched by gRPC core, without a Python lookup per call.
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
