"""StreamCompleteStructured, and CompleteStructured with image and file inputs: through a real
gateway and the simulator, and a structured stream split at every byte boundary."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import json_format
from llmgateway.client import assemble_structured_async
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.completion import ContentDelta, StreamEvent, StreamStarted
from service.domain.schemas import SchemaRegistry
from service.domain.structured import StructuredMode
from service.domain.structured_stream import StructuredFinished, structured_events
from service.errors import SchemaValidationError
from service.simulator import SimulatorConfig
from service.upstream.sse import SSEDecoder
from service.upstream.streaming import StreamAssembler
from tests.api.support import ROOT, chat_requests
from tests.content.support import image, pdf, png, text, user_parts
from tests.harness import Harness, auth, rich_error, start_gateway, user
from tests.surface.support import ledger_rows

StructuredCall = grpc.aio.UnaryStreamCall[
    pb.StreamCompleteStructuredRequest, pb.StreamCompleteStructuredResponse
]


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=1)) as harness:
        yield harness


async def collect(
    call: StructuredCall,
) -> tuple[list[pb.StreamCompleteStructuredResponse], grpc.aio.AioRpcError | None]:
    messages = []
    try:
        async for message in call:
            messages.append(message)
    except grpc.aio.AioRpcError as exc:
        return messages, exc
    return messages, None


def joined(messages: list[pb.StreamCompleteStructuredResponse]) -> str:
    return "".join(m.delta.json for m in messages if m.HasField("delta"))


async def test_native_json_streams_in_pieces_and_ends_validated(gw: Harness) -> None:
    request = pb.StreamCompleteStructuredRequest(
        schema_name="chat_reply_v1", messages=[user("Say hi")]
    )
    messages, error = await collect(gw.stub.StreamCompleteStructured(request, metadata=auth()))
    assert error is None
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    assert kinds.count("delta") >= 1
    end = messages[-1].end
    assert json.loads(end.json) == json.loads(joined(messages))
    assert json_format.MessageToDict(end.value) == json.loads(end.json)
    assert (end.schema_name, end.schema_version) == ("chat_reply_v1", 1)
    assert end.mode == pb.STRUCTURED_MODE_NATIVE
    assert not end.fallback_used
    assert not end.repaired
    assert end.finish_reason == pb.FINISH_REASON_STOP
    assert end.usage.completion_tokens > 0
    body = chat_requests(gw.sim)[-1].body
    assert body["stream"] is True
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "chat_reply_v1"
    assert body["provider"]["require_parameters"] is True
    assert body["temperature"] == 0
    assert "plugins" not in body  # response-healing does not act on streams


async def test_the_client_package_assembles_a_structured_stream(gw: Harness) -> None:
    request = pb.StreamCompleteStructuredRequest(
        schema_name="chat_reply_v1", messages=[user("Say hi")]
    )
    streamed = await assemble_structured_async(
        gw.stub.StreamCompleteStructured(request, metadata=auth())
    )
    whole = await gw.stub.CompleteStructured(
        pb.CompleteStructuredRequest(schema_name="chat_reply_v1", messages=[user("Say hi")]),
        metadata=auth(),
    )
    assert streamed.json == whole.json  # the simulator answers both alike
    assert (streamed.schema_name, streamed.schema_version, streamed.attempts) == (
        "chat_reply_v1",
        1,
        1,
    )
    assert streamed.id.startswith("gen-")
    assert streamed.model == whole.model
    assert streamed.mode == whole.mode
    assert streamed.usage.completion_tokens > 0
    bad = pb.StreamCompleteStructuredRequest(
        schema_name="chat_reply_v1", messages=[user("Say hi [[sim:json=wrong-shape]]")]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await assemble_structured_async(gw.stub.StreamCompleteStructured(bad, metadata=auth()))
    assert rich_error(caught.value).info.reason == "SCHEMA_VALIDATION_FAILED"


async def test_an_inline_schema_and_the_instruction_mode_with_fences(gw: Harness) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    request = pb.StreamCompleteStructuredRequest(
        model="mistralai/mistral-7b-instruct",
        inline_schema=pb.InlineJsonSchema(name="city", schema_json=json.dumps(schema)),
        messages=[user("Biggest city? [[sim:json=fenced]]")],
    )
    messages, error = await collect(gw.stub.StreamCompleteStructured(request, metadata=auth()))
    assert error is None
    end = messages[-1].end
    assert end.mode == pb.STRUCTURED_MODE_INSTRUCTIONS
    assert end.fallback_used
    assert end.repaired  # cut out of the fences
    assert "```" in joined(messages)
    assert set(json.loads(end.json)) == {"city", "population"}
    assert end.schema_version == 0
    await gw.rows_written(1)
    (row,) = ledger_rows(gw.server.settings.ledger_path)
    assert (row["rpc"], row["status"]) == ("StreamCompleteStructured", "OK")
    assert (row["repair_used"], row["fallback_used"]) == (1, 1)


@pytest.mark.parametrize(
    ("directive", "words"), [("wrong-shape", "did not match"), ("truncated", "cut off")]
)
async def test_json_that_fails_validation_never_ends_ok(
    gw: Harness, directive: str, words: str
) -> None:
    request = pb.StreamCompleteStructuredRequest(
        schema_name="chat_reply_v1", messages=[user(f"Say hi [[sim:json={directive}]]")]
    )
    messages, error = await collect(gw.stub.StreamCompleteStructured(request, metadata=auth()))
    kinds = [m.WhichOneof("event") for m in messages]
    assert "delta" in kinds
    assert "end" not in kinds
    assert error is not None
    rich = rich_error(error)
    assert (rich.code, rich.info.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SCHEMA_VALIDATION_FAILED",
    )
    assert words in rich.message
    assert rich.info.metadata["schema"] == "chat_reply_v1"
    assert rich.info.metadata["attempts"] == "1"
    assert len(chat_requests(gw.sim)) == 1  # no re-ask in a stream
    await gw.rows_written(1)
    (row,) = ledger_rows(gw.server.settings.ledger_path)
    assert row["status"] == "FAILED_PRECONDITION"
    assert row["completion_tokens"] > 0  # the usage chunk still came, and is booked


async def test_unknown_schema_and_bad_requests_fail_before_upstream(gw: Harness) -> None:
    for request in (
        pb.StreamCompleteStructuredRequest(schema_name="nope_v1", messages=[user("x")]),
        pb.StreamCompleteStructuredRequest(messages=[user("x")]),
        pb.StreamCompleteStructuredRequest(schema_name="chat_reply_v1"),
    ):
        messages, error = await collect(gw.stub.StreamCompleteStructured(request, metadata=auth()))
        assert messages == []
        assert error is not None
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert chat_requests(gw.sim) == []


async def test_structured_output_reads_images_and_files(gw: Harness) -> None:
    picture = png(seed=9)
    parts = [text("Describe this picture and this report"), image(picture), pdf()]
    reply = await gw.stub.CompleteStructured(
        pb.CompleteStructuredRequest(schema_name="chat_reply_v1", messages=[user_parts(*parts)]),
        metadata=auth(),
    )
    assert json.loads(reply.json)
    content = chat_requests(gw.sim)[-1].body["messages"][-1]["content"]
    assert [part["type"] for part in content] == ["text", "image_url", "file"]
    assert reply.usage.prompt_tokens > 258  # the image's tokens are billed with the prompt
    messages, error = await collect(
        gw.stub.StreamCompleteStructured(
            pb.StreamCompleteStructuredRequest(
                schema_name="chat_reply_v1", messages=[user_parts(*parts)]
            ),
            metadata=auth(),
        )
    )
    assert error is None
    assert messages[-1].end.json
    content = chat_requests(gw.sim)[-1].body["messages"][-1]["content"]
    assert [part["type"] for part in content] == ["text", "image_url", "file"]
    # A model that cannot read images is refused, naming the part.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.CompleteStructured(
            pb.CompleteStructuredRequest(
                model="mistralai/mistral-7b-instruct",
                schema_name="chat_reply_v1",
                messages=[user_parts(*parts)],
            ),
            metadata=auth(),
        )
    error_info = rich_error(caught.value).info
    assert (error_info.reason, error_info.metadata["field"]) == (
        "UNSUPPORTED_FEATURE",
        "messages[0].parts[1]",
    )


# --- split at every byte boundary ----------------------------------------------------------

VALUE = {
    "answer": 'Grüße, 世界 👋 — "quoted" \\ back',
    "followUps": ["Wie geht's?", "次は？"],
    "safety": {"flagged": False, "reason": None},
}


def _chunk(**delta: Any) -> bytes:
    body = {
        "id": "gen-s",
        "model": "m",
        "provider": "P",
        "choices": [{"index": 0, "delta": {"role": "assistant", **delta}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _transcript() -> tuple[bytes, list[str]]:
    document = json.dumps(VALUE, ensure_ascii=False, indent=1)
    pieces = [document[i : i + 7] for i in range(0, len(document), 7)]
    finish = {
        "id": "gen-s",
        "model": "m",
        "provider": "P",
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}],
    }
    usage = {
        "id": "gen-s",
        "model": "m",
        "provider": "P",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": len(pieces), "cost": 0.0001},
    }
    body = b": OPENROUTER PROCESSING\r\n\r\n" + b"".join(_chunk(content=p) for p in pieces)
    body += b"data: " + orjson.dumps(finish) + b"\n\n" + b"data: " + orjson.dumps(usage)
    body += b"\n\ndata: [DONE]\n\n"
    return body, pieces


def _events(splits: list[bytes]) -> list[StreamEvent]:
    decoder = SSEDecoder()
    assembler = StreamAssembler(lambda: 0.0)
    events: list[StreamEvent] = []
    for piece in splits:
        for sse in decoder.feed(piece):
            if not assembler.done:
                events.extend(assembler.on_event(sse))
    for sse in decoder.close():
        if not assembler.done:
            events.extend(assembler.on_event(sse))
    events.append(assembler.finish())
    return events


async def _structured(events: list[StreamEvent]) -> list[Any]:
    schema = SchemaRegistry.load(ROOT / "schemas").get("chat_reply_v1")

    async def source() -> AsyncIterator[StreamEvent]:
        for event in events:
            yield event

    return [e async for e in structured_events(source(), schema, StructuredMode.NATIVE)]


async def test_a_structured_stream_split_at_every_byte_boundary_reads_the_same() -> None:
    body, pieces = _transcript()
    whole = await _structured(_events([body]))
    assert isinstance(whole[0], StreamStarted)
    assert [e.text for e in whole if isinstance(e, ContentDelta)] == pieces
    end = whole[-1]
    assert isinstance(end, StructuredFinished)
    assert json.loads(end.json_text) == VALUE
    assert end.usage is not None
    assert end.usage.completion_tokens == len(pieces)
    for cut in range(1, len(body)):
        split = await _structured(_events([body[:cut], body[cut:]]))
        assert split == whole, f"differs when split at byte {cut}"
    # Byte by byte too: every boundary at once.
    assert await _structured(_events([body[i : i + 1] for i in range(len(body))])) == whole


async def test_a_split_stream_whose_json_is_cut_fails_validation() -> None:
    body, _ = _transcript()
    head = body[: body.index(b"data: ", len(body) // 2)]  # half the JSON
    finish = b'data: {"id":"gen-s","choices":[{"delta":{},"finish_reason":"length"}]}\n\n'
    with pytest.raises(SchemaValidationError) as caught:
        await _structured(_events([head + finish, b"data: [DONE]\n\n"]))
    assert "cut off" in caught.value.message
