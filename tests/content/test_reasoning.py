"""Reasoning: settings sent upstream, reasoning_details returned (unary and stream) and
accepted back on assistant messages so each family's signed or encrypted blocks go upstream
byte for byte (the simulator checks them as providers do, and refuses a changed block)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import DEFAULT_CATALOG, SimulatorConfig
from service.simulator.reasoning import unary_details
from tests.api.support import chat_requests, complete_error, stream, stream_error
from tests.harness import Harness, auth, start_gateway, user

CLAUDE = "anthropic/claude-sonnet-4.5"
GPT5 = "openai/gpt-5-mini"
GEMINI = "google/gemini-3-flash-preview"
HIGH = pb.ReasoningConfig(effort=pb.REASONING_EFFORT_HIGH)


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=0)) as harness:
        yield harness


def as_wire(detail: pb.ReasoningDetail) -> dict[str, Any]:
    """A returned block as it must reach OpenRouter again: exactly its set fields."""
    kind = {
        pb.REASONING_DETAIL_TYPE_TEXT: "reasoning.text",
        pb.REASONING_DETAIL_TYPE_SUMMARY: "reasoning.summary",
        pb.REASONING_DETAIL_TYPE_ENCRYPTED: "reasoning.encrypted",
    }[detail.type]
    out: dict[str, Any] = {"type": kind}
    for name in ("text", "summary", "data", "signature", "id", "format", "index"):
        if detail.HasField(name):
            out[name] = getattr(detail, name)
    return out


def follow_up(reply: pb.CompleteResponse, details: Any = None) -> list[pb.Message]:
    assistant = pb.Message(
        role=pb.ROLE_ASSISTANT,
        content=reply.content,
        reasoning_details=reply.reasoning_details if details is None else details,
    )
    return [user("What is 2 + 2?"), assistant, user("And times 3?")]


SHAPES = {
    # family -> the blocks' (type, fields set) as the replay cases show them
    CLAUDE: [(pb.REASONING_DETAIL_TYPE_TEXT, {"text", "signature", "format", "index"})],
    GPT5: [
        (pb.REASONING_DETAIL_TYPE_SUMMARY, {"summary", "format", "index"}),
        (pb.REASONING_DETAIL_TYPE_ENCRYPTED, {"data", "id", "format", "index"}),
    ],
    GEMINI: [
        (pb.REASONING_DETAIL_TYPE_TEXT, {"text", "format", "index"}),
        (pb.REASONING_DETAIL_TYPE_ENCRYPTED, {"data", "format", "index"}),
    ],
}
FORMATS = {CLAUDE: "anthropic-claude-v1", GPT5: "openai-responses-v1", GEMINI: "google-gemini-v1"}


@pytest.mark.parametrize("model", [CLAUDE, GPT5, GEMINI])
async def test_blocks_come_back_and_go_upstream_byte_for_byte(gw: Harness, model: str) -> None:
    first = await gw.stub.Complete(
        pb.CompleteRequest(model=model, messages=[user("What is 2 + 2?")], reasoning=HIGH),
        metadata=auth(),
    )
    assert chat_requests(gw.sim)[-1].body["reasoning"] == {"effort": "high"}
    assert first.reasoning  # the readable text stays filled for older callers
    assert first.usage.reasoning_tokens == 8
    shape = [
        (d.type, {f.name for f, _ in d.ListFields()} - {"type"}) for d in first.reasoning_details
    ]
    assert shape == SHAPES[model]
    assert {d.format for d in first.reasoning_details} == {FORMATS[model]}

    second = await gw.stub.Complete(
        pb.CompleteRequest(model=model, messages=follow_up(first), reasoning=HIGH),
        metadata=auth(),
    )
    assert second.content
    sent = chat_requests(gw.sim)[-1].body["messages"][1]
    assert sent["reasoning_details"] == [as_wire(d) for d in first.reasoning_details]
    # ... which are the blocks the simulator sent in the first answer, key for key.
    style = DEFAULT_CATALOG.get(model).reasoning_style  # type: ignore[union-attr]
    assert sent["reasoning_details"] == unary_details(style, first.reasoning)[1]


Field = Literal["signature", "data"]


@pytest.mark.parametrize(("model", "field"), [(CLAUDE, "signature"), (GPT5, "data")])
async def test_a_changed_block_is_refused_upstream(gw: Harness, model: str, field: Field) -> None:
    first = await gw.stub.Complete(
        pb.CompleteRequest(model=model, messages=[user("What is 2 + 2?")], reasoning=HIGH),
        metadata=auth(),
    )
    tampered = [pb.ReasoningDetail() for _ in first.reasoning_details]
    for copy, original in zip(tampered, first.reasoning_details, strict=True):
        copy.CopyFrom(original)
        if copy.HasField(field):
            value = getattr(copy, field)
            setattr(copy, field, value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1])
    error = await complete_error(
        gw, pb.CompleteRequest(model=model, messages=follow_up(first, tampered))
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.info.reason == "UPSTREAM_BAD_REQUEST"


async def test_tool_use_keeps_the_reasoning_of_the_call(gw: Harness) -> None:
    tools = [pb.Tool(name="get_weather")]
    first = await gw.stub.Complete(
        pb.CompleteRequest(
            model=CLAUDE,
            messages=[user("Weather in Oslo? [[sim:tool-call]]")],
            tools=tools,
            reasoning=pb.ReasoningConfig(max_tokens=2048),
            sampling=pb.SamplingParams(max_tokens=4096),
        ),
        metadata=auth(),
    )
    assert first.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert first.reasoning_details
    call = first.tool_calls[0]
    history = [
        user("Weather in Oslo? [[sim:tool-call]]"),
        pb.Message(
            role=pb.ROLE_ASSISTANT,
            tool_calls=[call],
            reasoning_details=first.reasoning_details,
        ),
        pb.Message(role=pb.ROLE_TOOL, tool_call_id=call.id, content='{"celsius": 4}'),
    ]
    second = await gw.stub.Complete(
        pb.CompleteRequest(model=CLAUDE, messages=history, tools=tools), metadata=auth()
    )
    assert second.content
    body = chat_requests(gw.sim)[-1].body
    assert "reasoning" not in body  # only what the caller asked for is sent
    assistant = body["messages"][1]
    assert assistant["content"] is None
    assert assistant["reasoning_details"] == [as_wire(d) for d in first.reasoning_details]
    assert chat_requests(gw.sim)[-2].body["reasoning"] == {"max_tokens": 2048}


@pytest.mark.parametrize("model", [CLAUDE, GPT5, GEMINI])
async def test_a_stream_relays_pieces_and_ends_with_the_merged_blocks(
    gw: Harness, model: str
) -> None:
    unary = await gw.stub.Complete(
        pb.CompleteRequest(model=model, messages=[user("What is 2 + 2?")], reasoning=HIGH),
        metadata=auth(),
    )
    outcome = await stream(
        gw,
        pb.StreamCompleteRequest(model=model, messages=[user("What is 2 + 2?")], reasoning=HIGH),
    )
    assert outcome.error is None
    pieces = [d for m in outcome.messages if m.HasField("delta") for d in m.delta.reasoning_details]
    assert len(pieces) > len(unary.reasoning_details)  # streamed in pieces
    end = outcome.messages[-1].end
    # The merged blocks are what Complete returns for the same request: either can go back.
    assert [as_wire(d) for d in end.reasoning_details] == [
        as_wire(d) for d in unary.reasoning_details
    ]
    assert outcome.reasoning == unary.reasoning
    assert end.usage.reasoning_tokens == 8
    again = await gw.stub.Complete(
        pb.CompleteRequest(
            model=model, messages=follow_up(unary, end.reasoning_details), reasoning=HIGH
        ),
        metadata=auth(),
    )
    assert again.content


async def test_excluded_reasoning_is_billed_but_not_returned(gw: Harness) -> None:
    config = pb.ReasoningConfig(effort=pb.REASONING_EFFORT_LOW, exclude=True)
    reply = await gw.stub.Complete(
        pb.CompleteRequest(model=GEMINI, messages=[user("Hi")], reasoning=config), metadata=auth()
    )
    assert chat_requests(gw.sim)[-1].body["reasoning"] == {"effort": "low", "exclude": True}
    assert reply.reasoning == ""
    assert not reply.reasoning_details
    assert reply.usage.reasoning_tokens == 8
    outcome = await stream(
        gw, pb.StreamCompleteRequest(model=GEMINI, messages=[user("Hi")], reasoning=config)
    )
    assert outcome.reasoning == ""
    assert not outcome.messages[-1].end.reasoning_details
    assert outcome.messages[-1].end.usage.reasoning_tokens == 8


async def test_every_setting_is_sent_as_openrouter_names_it(gw: Harness) -> None:
    config = pb.ReasoningConfig(
        max_tokens=1500,
        exclude=False,
        enabled=True,
        summary=pb.REASONING_SUMMARY_VERBOSITY_DETAILED,
    )
    await gw.stub.Complete(
        pb.CompleteRequest(
            model=GPT5,
            messages=[user("Hi")],
            reasoning=config,
            sampling=pb.SamplingParams(max_tokens=3000),
        ),
        metadata=auth(),
    )
    assert chat_requests(gw.sim)[-1].body["reasoning"] == {
        "max_tokens": 1500,
        "exclude": False,
        "enabled": True,
        "summary": "detailed",
    }


async def test_reasoning_from_a_model_that_does_not_reason_is_refused(gw: Harness) -> None:
    before = len(chat_requests(gw.sim))
    for request in (
        pb.CompleteRequest(model="openai/gpt-4o-mini", messages=[user("Hi")], reasoning=HIGH),
        pb.CompleteRequest(
            model=CLAUDE,
            fallback_models=["mistralai/mistral-7b-instruct"],
            messages=[user("Hi")],
            reasoning=pb.ReasoningConfig(),
        ),
    ):
        error = await complete_error(gw, request)
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION
        assert error.info.reason == "UNSUPPORTED_FEATURE"
        assert error.info.metadata["field"] == "reasoning"
    error = await stream_error(
        gw,
        pb.StreamCompleteRequest(model="openai/gpt-4o-mini", messages=[user("Hi")], reasoning=HIGH),
    )
    assert error.info.metadata["model"] == "openai/gpt-4o-mini"
    assert len(chat_requests(gw.sim)) == before
    # Turning reasoning off asks nothing of the model.
    off = pb.ReasoningConfig(enabled=False)
    await gw.stub.Complete(
        pb.CompleteRequest(model="openai/gpt-4o-mini", messages=[user("Hi")], reasoning=off),
        metadata=auth(),
    )
    assert chat_requests(gw.sim)[-1].body["reasoning"] == {"enabled": False}


BAD: list[Any] = [
    pytest.param(
        {"reasoning": pb.ReasoningConfig(effort=pb.REASONING_EFFORT_LOW, max_tokens=100)},
        "reasoning.max_tokens",
        id="effort-and-budget",
    ),
    pytest.param(
        {"reasoning": pb.ReasoningConfig(max_tokens=1024)},
        "reasoning.max_tokens",
        id="budget-not-below-max-tokens",
    ),
    pytest.param(
        {"reasoning": pb.ReasoningConfig(max_tokens=0)}, "reasoning.max_tokens", id="budget-zero"
    ),
    pytest.param(
        {
            "messages": [
                pb.Message(
                    role=pb.ROLE_USER,
                    content="hi",
                    reasoning_details=[pb.ReasoningDetail(type=pb.REASONING_DETAIL_TYPE_TEXT)],
                )
            ]
        },
        "messages[0].reasoning_details",
        id="details-on-a-user-message",
    ),
    pytest.param(
        {
            "messages": [
                user("hi"),
                pb.Message(
                    role=pb.ROLE_ASSISTANT, content="x", reasoning_details=[pb.ReasoningDetail()]
                ),
            ]
        },
        "messages[1].reasoning_details[0].type",
        id="detail-type-unset",
    ),
]


@pytest.mark.parametrize(("fields", "field"), BAD)
async def test_bad_reasoning_names_the_field(
    gw: Harness, fields: dict[str, Any], field: str
) -> None:
    request = pb.CompleteRequest(model=CLAUDE, **{"messages": [user("hi")], **fields})
    error = await complete_error(gw, request)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    violations = error.detail(error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == [field]
