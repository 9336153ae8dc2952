"""Streamed JSON (StreamCompleteStructured, JSON mode on StreamComplete) however it arrives,
through a real gateway and the simulator: written byte by byte or in odd pieces, it ends as it
does whole; coalesced (the simulator writes a whole stream at once, so the gateway merges
what it finds buffered), JSON that fails validation still ends SCHEMA_VALIDATION_FAILED,
never OK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import SimulatorConfig
from tests.api.support import drain
from tests.harness import Harness, auth, rich_error, start_gateway, user
from tests.surface.support import ledger_rows
from tests.surface.test_stream_structured import collect, joined

QUESTION = "Say hi"


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=1)) as harness:
        yield harness


@pytest.fixture
async def fast() -> AsyncIterator[Harness]:
    async with start_gateway(sim_config=SimulatorConfig(fast=True)) as harness:
        yield harness


def structured(text: str) -> pb.StreamCompleteStructuredRequest:
    return pb.StreamCompleteStructuredRequest(schema_name="chat_reply_v1", messages=[user(text)])


async def test_a_structured_stream_written_in_pieces_ends_as_it_does_whole(gw: Harness) -> None:
    call = gw.stub.StreamCompleteStructured(structured(QUESTION), metadata=auth())
    whole, error = await collect(call)
    assert error is None
    for split in (1, 2, 3, 7, 64):
        request = structured(f"{QUESTION} [[sim:split={split}]]")
        messages, error = await collect(gw.stub.StreamCompleteStructured(request, metadata=auth()))
        assert error is None, f"split={split}: {error}"
        assert joined(messages) == joined(whole), f"split={split}"
        end = messages[-1].end
        assert end.json == whole[-1].end.json
        assert end.usage.completion_tokens == whole[-1].end.usage.completion_tokens
    cut = structured(f"{QUESTION} [[sim:split=1]][[sim:json=truncated]]")
    messages, error = await collect(gw.stub.StreamCompleteStructured(cut, metadata=auth()))
    assert "end" not in [m.WhichOneof("event") for m in messages]
    assert error is not None
    assert rich_error(error).info.reason == "SCHEMA_VALIDATION_FAILED"


@pytest.mark.parametrize("directive", ["wrong-shape", "truncated"])
async def test_coalesced_json_that_fails_validation_never_ends_ok(
    fast: Harness, directive: str
) -> None:
    request = structured(f"{QUESTION} [[sim:json={directive}]]")
    messages, error = await collect(fast.stub.StreamCompleteStructured(request, metadata=auth()))
    deltas = [m for m in messages if m.HasField("delta")]
    assert deltas
    assert "end" not in [m.WhichOneof("event") for m in messages]
    assert error is not None
    rich = rich_error(error)
    assert (rich.code, rich.info.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SCHEMA_VALIDATION_FAILED",
    )
    await fast.rows_written(1)
    (row,) = ledger_rows(fast.server.settings.ledger_path)
    assert row["status"] == "FAILED_PRECONDITION"
    # Coalesced: fewer messages than the tokens generated.
    assert len(deltas) < row["completion_tokens"]


async def test_coalesced_valid_json_ends_ok_and_a_bad_json_mode_stream_does_not(
    fast: Harness,
) -> None:
    messages, error = await collect(
        fast.stub.StreamCompleteStructured(structured(QUESTION), metadata=auth())
    )
    assert error is None
    assert json.loads(messages[-1].end.json) == json.loads(joined(messages))
    bad = await drain(
        fast.stub.StreamComplete(
            pb.StreamCompleteRequest(
                messages=[user("JSON please [[sim:json=invalid]]")],
                response_format=pb.RESPONSE_FORMAT_JSON_OBJECT,
            ),
            metadata=auth(),
        )
    )
    assert "delta" in bad.kinds
    assert "end" not in bad.kinds
    assert bad.error is not None
    assert rich_error(bad.error).info.reason == "SCHEMA_VALIDATION_FAILED"
