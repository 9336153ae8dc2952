"""CompleteStructured through a real server: registered and inline schemas, fallbacks, repair."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import json_format
from llmgateway.v1 import completion_service_pb2 as pb

from tests.harness import Harness, auth, rich_error, start_gateway, user


async def _structured(gw: Harness, **fields: object) -> pb.CompleteStructuredResponse:
    request = pb.CompleteStructuredRequest(**fields)  # type: ignore[arg-type]
    return await gw.stub.CompleteStructured(request, metadata=auth())


async def test_registered_schema_returns_validated_json_and_struct() -> None:
    async with start_gateway() as gw:
        reply = await _structured(
            gw, schema_name="chat_reply_v1", messages=[user("Give me a reply")]
        )
        value = json.loads(reply.json)
        assert set(value) == {"answer", "followUps", "safety"}
        assert json_format.MessageToDict(reply.value) == value
        assert reply.schema_name == "chat_reply_v1"
        assert reply.schema_version == 1
        assert reply.mode == pb.STRUCTURED_MODE_NATIVE
        assert not reply.fallback_used
        assert not reply.repaired
        assert reply.attempts == 1
        assert reply.usage.total_tokens > 0
        body = gw.sim.state.requests[-1].body
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["strict"] is True
        assert body["provider"]["require_parameters"] is True


@pytest.mark.parametrize(
    ("model", "mode", "response_format"),
    [
        ("anthropic/claude-3.5-haiku", pb.STRUCTURED_MODE_JSON_OBJECT, "json_object"),
        ("mistralai/mistral-7b-instruct", pb.STRUCTURED_MODE_INSTRUCTIONS, None),
    ],
)
async def test_models_without_structured_outputs_fall_back(
    model: str, mode: int, response_format: str | None
) -> None:
    async with start_gateway() as gw:
        reply = await _structured(
            gw, model=model, schema_name="chat_ui_payload_v1", messages=[user("Summarise")]
        )
        assert reply.mode == mode
        assert reply.fallback_used
        assert len(json.loads(reply.json)["bullets"]) >= 1
        body = gw.sim.state.requests[-1].body
        assert body.get("response_format", {}).get("type") == response_format


async def test_repair_that_succeeds_sums_usage_over_attempts() -> None:
    async with start_gateway() as gw:
        reply = await _structured(
            gw, schema_name="chat_reply_v1", messages=[user("Answer [[sim:json=wrong-once]]")]
        )
        assert reply.repaired
        assert reply.attempts == 2
        generations = list(gw.sim.state.generations.values())
        assert reply.usage.total_tokens == sum(
            g.tokens_prompt + g.tokens_completion for g in generations
        )
        record, code = gw.finished[-1]
        assert code is grpc.StatusCode.OK
        assert record.repair_used


async def test_repair_that_fails_is_failed_precondition_with_findings() -> None:
    async with start_gateway() as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _structured(
                gw,
                schema_name="chat_reply_v1",
                messages=[user("Answer [[sim:json=wrong-shape]]")],
            )
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION
        assert error.info.reason == "SCHEMA_VALIDATION_FAILED"
        assert error.info.metadata["findings"]
        assert "[[sim" not in str(error.details)


async def test_invalid_inline_schema_names_the_problem() -> None:
    async with start_gateway() as gw:
        schema = {"type": "object", "properties": {"x": {"type": "string"}}}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _structured(
                gw,
                inline_schema=pb.InlineJsonSchema(name="mine", schema_json=json.dumps(schema)),
                messages=[user("Hi")],
            )
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        violation = error.detail(type(error.details[-1])).field_violations[0]
        assert violation.field == "inline_schema.schema_json"
        assert "additionalProperties" in violation.description
        assert not [r for r in gw.sim.state.requests if r.path.endswith("/chat/completions")]


async def test_inline_schema_is_used() -> None:
    async with start_gateway() as gw:
        schema = {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
            "additionalProperties": False,
        }
        reply = await _structured(
            gw,
            inline_schema=pb.InlineJsonSchema(name="trip", schema_json=json.dumps(schema)),
            messages=[user("Plan")],
        )
        assert set(json.loads(reply.json)) == {"city", "days"}
        assert reply.schema_name == "trip"
        assert reply.schema_version == 0


async def test_unknown_schema_name() -> None:
    async with start_gateway() as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _structured(gw, schema_name="chat_reply_v9", messages=[user("Hi")])
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert error.info.reason == "UNKNOWN_SCHEMA"
        assert "chat_reply_v1" in error.message


async def test_missing_schema_is_invalid() -> None:
    async with start_gateway() as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _structured(gw, messages=[user("Hi")])
        assert rich_error(caught.value).code is grpc.StatusCode.INVALID_ARGUMENT
