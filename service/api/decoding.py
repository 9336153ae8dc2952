"""Health and reflection with the contract's answer to undecodable bytes: INVALID_ARGUMENT.

gRPC's generated ``add_*_to_server`` registers each method with its message type's parser as
request deserializer; when the parser fails, gRPC itself answers UNKNOWN ("Unexpected
DecodeError…"), with no ErrorInfo. ``DecodingRegistrar`` stands in for the server while such a
function registers: each method is registered without a deserializer instead, and its
handler parses the bytes itself, answering INVALID_ARGUMENT with ErrorInfo when they are not a
message of its type (as ``service.api.frame`` does for the contract's own RPCs). The status is
set on the context, not raised: an abort's traceback would keep the request alive.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc

from service.api.status import status_code_for, to_rpc_status
from service.errors import InvalidRequestError

_DETAILS_KEY = "grpc-status-details-bin"
Parse = Callable[[bytes], Any]


class _UndecodableError(Exception):
    """The request bytes did not parse; the status is already set on the context."""


class DecodingRegistrar:
    """Pass as the ``server`` to a generated ``add_*Servicer_to_server``."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        # Dropped: generated code passes the same methods to add_registered_method_handlers,
        # where they are registered, decoding, both ways.
        del handlers

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        decoding = {name: parsing_itself(handler) for name, handler in handlers.items()}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, decoding),)
        )
        self._server.add_registered_method_handlers(service, decoding)
        self.registered.append(service)


def register_decoding(
    add: Callable[[Any, Any], None], servicer: object, server: grpc.aio.Server
) -> None:
    """``add(servicer, server)``, with every method parsing its own request bytes."""
    registrar = DecodingRegistrar(server)
    add(servicer, registrar)
    if not registrar.registered:
        raise RuntimeError(f"{getattr(add, '__name__', add)} registered no methods")


def parsing_itself(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` registered without a deserializer: it parses its request bytes itself."""
    parse: Parse | None = handler.request_deserializer
    if parse is None:
        return handler
    serialize = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            _stream_stream(handler.stream_stream, parse), None, serialize
        )
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            _stream_unary(handler.stream_unary, parse), None, serialize
        )
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _unary_stream(handler.unary_stream, parse), None, serialize
        )
    return grpc.unary_unary_rpc_method_handler(
        _unary_unary(handler.unary_unary, parse), None, serialize
    )


def _refuse(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    error = InvalidRequestError(
        "the request is not a valid protocol buffers message of this method's type",
        metadata={"cause": "undecodable"},
    )
    status = to_rpc_status(error)
    context.set_code(status_code_for(error))
    context.set_details(status.message)
    context.set_trailing_metadata(((_DETAILS_KEY, status.SerializeToString()),))


def _parse(parse: Parse, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    try:
        return parse(raw)
    except Exception:
        # DecodeError for most damage; whatever else a parser raises is about the bytes too.
        _refuse(context)
        raise _UndecodableError from None


def _unary_unary(behavior: Any, parse: Parse) -> Any:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            request = _parse(parse, raw, context)
        except _UndecodableError:
            return None
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return handle


def _unary_stream(behavior: Any, parse: Parse) -> Any:
    if inspect.isasyncgenfunction(behavior):

        async def stream(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                request = _parse(parse, raw, context)
            except _UndecodableError:
                return
            async for response in behavior(request, context):
                yield response

        return stream

    async def write(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            request = _parse(parse, raw, context)
        except _UndecodableError:
            return None
        return await behavior(request, context)  # writes with context.write

    return write


async def _requests(
    raws: AsyncIterator[bytes], parse: Parse, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    async for raw in raws:
        yield _parse(parse, raw, context)


def _stream_stream(behavior: Any, parse: Parse) -> Any:
    async def stream(
        raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        try:
            async for response in behavior(_requests(raws, parse, context), context):
                yield response
        except _UndecodableError:
            return

    return stream


def _stream_unary(behavior: Any, parse: Parse) -> Any:
    async def handle(
        raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        try:
            return await behavior(_requests(raws, parse, context), context)
        except _UndecodableError:
            return None

    return handle
