"""JSON mode on Complete and StreamComplete, through a real gateway and the simulator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import SimulatorConfig
from tests.api.support import chat_requests, drain
from tests.harness import Harness, auth, rich_error, start_gateway, user
from tests.surface.support import ledger_rows

JSON = pb.RESPONSE_FORMAT_JSON_OBJECT


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=0)) as harness:
        yield harness


async def test_complete_in_json_mode_asks_for_it_and_answers_an_object(gw: Harness) -> None:
    request = pb.CompleteRequest(messages=[user("Reply in JSON")], response_format=JSON)
    reply = await gw.stub.Complete(request, metadata=auth())
    assert isinstance(json.loads(reply.content), dict)
    body = chat_requests(gw.sim)[-1].body
    assert body["response_format"] == {"type": "json_object"}
    # Only endpoints that honour it, and healed upstream (unary only).
    assert body["provider"]["require_parameters"] is True
    assert {"id": "response-healing"} in body["plugins"]


async def test_text_is_the_default_and_sends_no_response_format(gw: Harness) -> None:
    for value in (pb.RESPONSE_FORMAT_UNSPECIFIED, pb.RESPONSE_FORMAT_TEXT):
        request = pb.CompleteRequest(messages=[user("Hi")], response_format=value)
        await gw.stub.Complete(request, metadata=auth())
        body = chat_requests(gw.sim)[-1].body
        assert "response_format" not in body
        assert "provider" not in body


async def test_a_model_without_json_mode_is_refused_before_upstream(gw: Harness) -> None:
    request = pb.CompleteRequest(
        model="openai/gpt-4o-mini",
        fallback_models=["mistralai/mistral-7b-instruct"],
        messages=[user("Reply in JSON")],
        response_format=JSON,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(request, metadata=auth())
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UNSUPPORTED_FEATURE",
    )
    assert error.info.metadata["field"] == "response_format"
    assert error.info.metadata["model"] == "mistralai/mistral-7b-instruct"
    assert chat_requests(gw.sim) == []


@pytest.mark.parametrize(
    ("directive", "finding"),
    [
        ("[[sim:json=invalid]]", "not valid JSON"),
        ("[[sim:json=truncated]]", "cut off"),
        ("[[sim:json=wrong-shape]]", "not an object: an array"),
    ],
)
async def test_an_answer_that_is_no_json_object_is_never_ok(
    gw: Harness, directive: str, finding: str
) -> None:
    request = pb.CompleteRequest(messages=[user(f"JSON {directive}")], response_format=JSON)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.Complete(request, metadata=auth())
    error = rich_error(caught.value)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SCHEMA_VALIDATION_FAILED",
    )
    assert error.info.metadata["schema"] == "json_object"
    assert finding in error.info.metadata["findings"]
    # Billed upstream, so booked: the row has its tokens and cost.
    await gw.rows_written(1)
    (row,) = ledger_rows(gw.server.settings.ledger_path)
    assert row["status"] == "FAILED_PRECONDITION"
    assert row["completion_tokens"] > 0
    assert row["cost_usd"] is not None


async def test_a_json_mode_stream_ends_ok_only_with_an_object(gw: Harness) -> None:
    good = await drain(
        gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user("JSON please")], response_format=JSON),
            metadata=auth(),
        )
    )
    assert good.error is None
    assert good.kinds[0] == "start"
    assert good.kinds[-1] == "end"
    assert isinstance(json.loads(good.content), dict)
    body = chat_requests(gw.sim)[-1].body
    assert body["response_format"] == {"type": "json_object"}
    assert "plugins" not in body  # healing does nothing for streams

    bad = await drain(
        gw.stub.StreamComplete(
            pb.StreamCompleteRequest(
                messages=[user("JSON please [[sim:json=invalid]]")], response_format=JSON
            ),
            metadata=auth(),
        )
    )
    # The deltas came as they were generated; the end never did.
    assert "delta" in bad.kinds
    assert "end" not in bad.kinds
    assert bad.error is not None
    error = rich_error(bad.error)
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SCHEMA_VALIDATION_FAILED",
    )


async def test_tool_calls_in_json_mode_are_not_held_to_json(gw: Harness) -> None:
    tool = pb.Tool(name="lookup", description="Look something up")
    reply = await gw.stub.Complete(
        pb.CompleteRequest(
            messages=[user("JSON, and call the tool [[sim:tool-call]]")],
            tools=[tool],
            response_format=JSON,
        ),
        metadata=auth(),
    )
    assert reply.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert reply.tool_calls[0].name == "lookup"
