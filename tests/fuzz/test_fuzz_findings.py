"""What the fuzz found, each pinned by a test of its own: health and reflection answered
undecodable bytes UNKNOWN, and a NaN or infinite number in a tool's parameters was INTERNAL."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from tests.harness import auth, rich_error, start_gateway, user

GARBAGE = b"\xff\xff\xff\xff\x0f"  # a varint longer than 64 bits: no message parses it


def _same(data: bytes) -> bytes:
    return data


async def send(channel: grpc.aio.Channel, path: str, kind: str) -> None:
    if kind == "unary":
        await channel.unary_unary(path, _same, _same)(GARBAGE, timeout=5)
    elif kind == "stream":
        async for _ in channel.unary_stream(path, _same, _same)(GARBAGE, timeout=5):
            pass
    else:
        call = channel.stream_stream(path, _same, _same)(timeout=5)
        await call.write(GARBAGE)
        await call.done_writing()
        async for _ in call:
            pass


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/grpc.health.v1.Health/Check", "unary"),
        ("/grpc.health.v1.Health/List", "unary"),
        ("/grpc.health.v1.Health/Watch", "stream"),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "bidi"),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "bidi"),
    ],
)
async def test_undecodable_bytes_to_health_and_reflection_are_invalid_argument(
    path: str, kind: str
) -> None:
    async with start_gateway() as gw:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await send(gw.channel, path, kind)
    error = rich_error(info.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.info.reason == "INVALID_ARGUMENT"
    assert error.info.metadata["cause"] == "undecodable"
    assert "DecodeError" not in error.message


async def test_health_and_reflection_still_answer_good_requests() -> None:
    async with start_gateway() as gw:
        check = gw.channel.unary_unary("/grpc.health.v1.Health/Check", _same, _same)
        assert await check(b"", timeout=5) == b"\x08\x01"  # status: SERVING
        call = gw.channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", _same, _same
        )(timeout=5)
        await call.write(b"\x3a\x00")  # list_services: ""
        await call.done_writing()
        replies = [reply async for reply in call]
    assert len(replies) == 1
    assert b"llmgateway.v1.CompletionService" in replies[0]


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_a_non_finite_number_in_tool_parameters_is_invalid_argument(number: float) -> None:
    parameters = struct_pb2.Struct()
    parameters.update({"type": "object", "properties": {"n": {"type": "number"}}})
    # Set on the Value itself: Struct.update would refuse the number as JSON does.
    parameters.fields["properties"].struct_value.fields["n"].struct_value.fields[
        "maximum"
    ].number_value = number
    request = pb.CompleteRequest(
        messages=[user("Hi")], tools=[pb.Tool(name="lookup", parameters=parameters)]
    )
    async with start_gateway() as gw:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gw.stub.Complete(request, metadata=auth())
    error = rich_error(info.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = error.detail(error_details_pb2.BadRequest).field_violations
    assert violation.field == "tools[0].parameters"
    assert violation.description == "numbers must be finite"
