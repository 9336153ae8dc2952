"""Every failure has its status: undecodable request bytes and out-of-range Timestamps.

The methods take their requests as bytes and the frame parses them after authentication, so
bytes that are no protocol buffers message of the method's type are INVALID_ARGUMENT with
ErrorInfo, one log line and the caller's row, like any other bad input (gRPC's own
deserializer made them UNKNOWN, with nothing logged or recorded).
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from tests.accounting.support import acct_gateway, sqlite_rows
from tests.harness import Harness, auth, rich_error

SERVICE = "/llmgateway.v1.CompletionService/"
UNARY = ["Complete", "CompleteStructured", "ListModels", "GetUsage"]
# Invalid in every message type: a varint with no value, a length past the end, wire type 7.
GARBAGE = [b"\x08", b"\x0a\xff\xff\xff\x0f", b"\x0f"]


def unary(gw: Harness, rpc: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """A method that sends its request bytes as they are."""
    return gw.channel.unary_unary(
        SERVICE + rpc, request_serializer=bytes, response_deserializer=bytes
    )


def streaming(gw: Harness, rpc: str) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    return gw.channel.unary_stream(
        SERVICE + rpc, request_serializer=bytes, response_deserializer=bytes
    )


async def raw_error(
    gw: Harness, rpc: str, body: bytes, *, streams: bool | None = None, key: str | None = None
) -> grpc.aio.AioRpcError:
    """The error of a call whose request is ``body``, sent as is."""
    metadata = auth() if key is None else auth(key)
    if streams or (streams is None and rpc == "StreamComplete"):
        call = streaming(gw, rpc)(body, metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
    else:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(gw, rpc)(body, metadata=metadata)
    return caught.value


@pytest.mark.parametrize("rpc", [*UNARY, "StreamComplete"])
async def test_undecodable_bytes_are_invalid_argument_with_a_log_line_and_a_row(
    rpc: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "usage.db"
    with caplog.at_level(logging.INFO, logger="service.rpc"):
        async with acct_gateway(path) as gw:
            errors = [rich_error(await raw_error(gw, rpc, body)) for body in GARBAGE]
            await gw.rows_written(len(GARBAGE))
            rows = sqlite_rows(path)

    for error in errors:
        assert (error.code, error.info.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert error.info.metadata["cause"] == "undecodable"
        assert error.info.metadata["request_id"]
    assert [(r["rpc"], r["status"], r["caller_id"]) for r in rows] == [
        (rpc, "INVALID_ARGUMENT", "alpha")
    ] * len(GARBAGE)
    finished = [r for r in caplog.records if r.getMessage() == "rpc finished"]
    assert len(finished) == len(GARBAGE)
    assert "Traceback" not in caplog.text


async def test_a_stranger_with_undecodable_bytes_is_unauthenticated_unparsed(
    tmp_path: Path,
) -> None:
    # Authentication comes first: a stranger's bytes are never parsed.
    async with acct_gateway(tmp_path / "usage.db") as gw:
        error = await raw_error(gw, "Complete", GARBAGE[0], key="nobody")
    assert rich_error(error).info.reason == "API_KEY_INVALID"


async def test_a_string_that_is_not_utf8_is_undecodable(tmp_path: Path) -> None:
    # CompleteRequest's field 1 is a string: protobuf refuses invalid UTF-8 in it.
    async with acct_gateway(tmp_path / "usage.db") as gw:
        error = rich_error(await raw_error(gw, "Complete", b"\x0a\x02\xc3\x28"))
    assert (error.code, error.info.metadata["cause"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "undecodable",
    )


@pytest.mark.parametrize(
    "stamp",
    [
        timestamp_pb2.Timestamp(seconds=2**62),
        timestamp_pb2.Timestamp(seconds=-(2**62)),
        timestamp_pb2.Timestamp(seconds=253_402_300_800),  # 10000-01-01
        timestamp_pb2.Timestamp(seconds=0, nanos=1_000_000_000),
        timestamp_pb2.Timestamp(seconds=0, nanos=-1),
    ],
    ids=["far-future", "far-past", "year-10000", "nanos-high", "nanos-negative"],
)
@pytest.mark.parametrize("field", ["start_time", "end_time"])
async def test_an_out_of_range_timestamp_is_invalid_argument_naming_the_field(
    stamp: timestamp_pb2.Timestamp, field: str, tmp_path: Path
) -> None:
    async with acct_gateway(tmp_path / "usage.db") as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.GetUsage(pb.GetUsageRequest(**{field: stamp}), metadata=auth())
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    [violation] = error.detail(error_details_pb2.BadRequest).field_violations
    assert violation.field == field


async def test_every_method_of_the_contract_is_served(tmp_path: Path) -> None:
    # The methods are registered by hand (requests as bytes): none of the contract's may be
    # missing, which gRPC would answer UNIMPLEMENTED.
    service = pb.DESCRIPTOR.services_by_name["CompletionService"]
    async with acct_gateway(tmp_path / "usage.db") as gw:
        for method in service.methods:
            error = await raw_error(
                gw, method.name, b"", streams=method.server_streaming, key="nobody"
            )
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED, method.name
