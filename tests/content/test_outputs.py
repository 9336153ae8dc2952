"""Outputs beyond text through a real gateway and the simulator: generated images,
citations and parsed-file annotations, refusals, logprobs, and nothing dropped silently."""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import SimulatorConfig
from tests.api.support import chat_requests, complete_error, stream, stream_error
from tests.content.support import pdf, text, user_parts
from tests.harness import Harness, auth, start_gateway, user

PAINTER = "google/gemini-2.5-flash-image"
IMAGE_AND_TEXT = [pb.MODALITY_IMAGE, pb.MODALITY_TEXT]


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=0)) as harness:
        yield harness


def assert_png(image: pb.GeneratedImage) -> None:
    """A whole, valid PNG: signature, 16x16 header, and pixel data that inflates."""
    assert image.WhichOneof("source") == "inline_data"
    assert image.inline_data.mime_type == "image/png"
    data = image.inline_data.data
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (16, 16)
    idat = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[idat - 4 : idat])
    assert len(zlib.decompress(data[idat + 4 : idat + 4 + length])) == 16 * (1 + 16 * 3)


async def test_complete_returns_generated_images(gw: Harness) -> None:
    reply = await gw.stub.Complete(
        pb.CompleteRequest(
            model=PAINTER,
            messages=[user("A dog [[sim:images=2]]")],
            output_modalities=IMAGE_AND_TEXT,
        ),
        metadata=auth(),
    )
    assert chat_requests(gw.sim)[-1].body["modalities"] == ["image", "text"]
    assert reply.content
    assert len(reply.images) == 2
    for image in reply.images:
        assert_png(image)
    assert reply.images[0].inline_data.data != reply.images[1].inline_data.data
    assert reply.usage.completion_tokens >= 2 * 1290
    assert not reply.unsupported_outputs


@pytest.mark.parametrize(
    ("modalities", "asked", "sent"),
    [
        (IMAGE_AND_TEXT, None, 1024 + 2000),  # room for one image (~1,290 tokens) and the text
        ([pb.MODALITY_IMAGE], None, 1024 + 2000),
        ([], None, 1024),  # text only: the configured default alone
        (IMAGE_AND_TEXT, 500, 500),  # the caller's own limit is never raised
    ],
)
async def test_image_output_gets_room_for_an_image_under_the_default_max_tokens(
    gw: Harness, modalities: list[pb.Modality.ValueType], asked: int | None, sent: int
) -> None:
    # Providers count an image's tokens against max_tokens: under the text default alone
    # (GATEWAY_DEFAULT_MAX_TOKENS, 1,024) a 1,290-token image would be cut off.
    request = pb.CompleteRequest(model=PAINTER, messages=[user("A dog")])
    request.output_modalities.extend(modalities)
    if asked is not None:
        request.sampling.max_tokens = asked
    await gw.stub.Complete(request, metadata=auth())
    assert chat_requests(gw.sim)[-1].body["max_tokens"] == sent


async def test_an_image_only_stream_ends_with_its_image_not_an_empty_answer(gw: Harness) -> None:
    # The case: such a stream used to end OK, empty, with no sign of the image.
    outcome = await stream(
        gw,
        pb.StreamCompleteRequest(
            model=PAINTER, messages=[user("A dog")], output_modalities=[pb.MODALITY_IMAGE]
        ),
    )
    assert outcome.error is None
    assert outcome.content == ""
    images = [i for m in outcome.messages if m.HasField("delta") for i in m.delta.images]
    assert len(images) == 1
    assert_png(images[0])
    assert images[0].index == 0
    end = outcome.messages[-1].end
    assert end.finish_reason == pb.FINISH_REASON_STOP
    assert end.usage.completion_tokens == 1290


async def test_image_output_from_a_text_model_is_refused(gw: Harness) -> None:
    before = len(chat_requests(gw.sim))
    error = await complete_error(
        gw,
        pb.CompleteRequest(
            model=PAINTER,
            fallback_models=["openai/gpt-4o-mini"],
            messages=[user("A dog")],
            output_modalities=IMAGE_AND_TEXT,
        ),
    )
    assert (error.code, error.info.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UNSUPPORTED_FEATURE",
    )
    assert error.info.metadata["field"] == "output_modalities"
    assert error.info.metadata["model"] == "openai/gpt-4o-mini"
    assert error.info.metadata["modality"] == "image"
    for modalities, field in (
        ([pb.MODALITY_AUDIO], "output_modalities[0]"),
        ([pb.MODALITY_TEXT, pb.MODALITY_UNSPECIFIED], "output_modalities[1]"),
    ):
        bad = await stream_error(
            gw,
            pb.StreamCompleteRequest(
                model=PAINTER, messages=[user("A dog")], output_modalities=modalities
            ),
        )
        assert bad.code is grpc.StatusCode.INVALID_ARGUMENT
        violations = bad.detail(error_details_pb2.BadRequest).field_violations
        assert [v.field for v in violations] == [field]
    assert len(chat_requests(gw.sim)) == before


async def test_citations_with_spans_unary_and_one_a_delta_in_a_stream(gw: Harness) -> None:
    reply = await gw.stub.Complete(
        pb.CompleteRequest(messages=[user("Cite [[sim:citations=3]]")]), metadata=auth()
    )
    cites = [a.url_citation for a in reply.annotations]
    assert [c.url for c in cites] == [f"https://docs.example.org/sim/source-{i}" for i in (1, 2, 3)]
    assert cites[0].title == "Simulated source 1"
    assert cites[1].title == ""  # as in the recordings, a title may be empty
    assert all(c.content for c in cites)
    for cite in cites:
        span = reply.content[cite.start_index : cite.end_index]
        assert span
        assert " " not in span
    outcome = await stream(
        gw, pb.StreamCompleteRequest(messages=[user("Cite [[sim:citations=3]]")])
    )
    carrying = [m.delta for m in outcome.messages if m.HasField("delta") and m.delta.annotations]
    assert [len(d.annotations) for d in carrying] == [1, 1, 1]
    assert [d.annotations[0].url_citation for d in carrying] == cites
    assert outcome.kinds[-1] == "end"


@pytest.mark.parametrize(
    ("model", "engine", "annotated"),
    [
        ("meta-llama/llama-3.1-8b-instruct", None, True),  # cannot read files: parsed
        ("openai/gpt-4o-mini", None, False),  # reads files itself by default
        ("openai/gpt-4o-mini", pb.PDF_ENGINE_CLOUDFLARE_AI, True),
        ("openai/gpt-4o-mini", pb.PDF_ENGINE_NATIVE, False),
    ],
)
async def test_a_parsed_file_comes_back_as_a_file_annotation(
    gw: Harness, model: str, engine: Any, annotated: bool
) -> None:
    request = pb.CompleteRequest(
        model=model, messages=[user_parts(text("Summarise"), pdf(name="q3.pdf"))]
    )
    if engine is not None:
        request.file_parser.pdf_engine = engine
    reply = await gw.stub.Complete(request, metadata=auth())
    files = [a.file for a in reply.annotations if a.WhichOneof("kind") == "file"]
    if not annotated:
        assert files == []
        return
    (file,) = files
    assert file.name == "q3.pdf"
    assert len(file.hash) == 64
    assert file.content[0].text == '<file name="q3.pdf">'
    assert all(p.WhichOneof("data") == "text" for p in file.content)


async def test_a_refusal_is_reported_unary_and_streamed(gw: Harness) -> None:
    reply = await gw.stub.Complete(
        pb.CompleteRequest(messages=[user("Do harm [[sim:refusal]]")]), metadata=auth()
    )
    assert reply.content == ""
    assert reply.refusal == "I'm sorry, but I can't help with that."
    outcome = await stream(gw, pb.StreamCompleteRequest(messages=[user("Do harm [[sim:refusal]]")]))
    refusal = "".join(m.delta.refusal for m in outcome.messages if m.HasField("delta"))
    assert refusal == reply.refusal
    assert outcome.content == ""
    assert outcome.messages[-1].end.usage.completion_tokens == 8


async def test_logprobs_when_asked(gw: Harness) -> None:
    reply = await gw.stub.Complete(
        pb.CompleteRequest(messages=[user("Hi [[sim:tokens=5]]")], logprobs=True, top_logprobs=2),
        metadata=auth(),
    )
    body = chat_requests(gw.sim)[-1].body
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    tokens = reply.logprobs.content
    assert "".join(t.token for t in tokens) == reply.content
    assert all(t.token_bytes == t.token.encode() for t in tokens)
    assert all(t.logprob <= 0 for t in tokens)
    assert [len(t.top_logprobs) for t in tokens] == [2] * 5
    assert not tokens[0].top_logprobs[1].HasField("token_bytes")  # null stays unset
    outcome = await stream(
        gw, pb.StreamCompleteRequest(messages=[user("Hi [[sim:tokens=5]]")], logprobs=True)
    )
    streamed = [
        t for m in outcome.messages if m.HasField("delta") for t in m.delta.logprobs.content
    ]
    assert [t.token for t in streamed] == [t.token for t in tokens]
    assert [t.logprob for t in streamed] == [t.logprob for t in tokens]


async def test_logprobs_are_refused_where_the_model_has_none(gw: Harness) -> None:
    error = await complete_error(
        gw,
        pb.CompleteRequest(
            model="anthropic/claude-3.5-haiku", messages=[user("Hi")], logprobs=True
        ),
    )
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.info.metadata["field"] == "logprobs"
    for asked, top in ((False, 3), (True, 21)):
        request = pb.CompleteRequest(messages=[user("Hi")], logprobs=asked, top_logprobs=top)
        bad = await complete_error(gw, request)
        assert bad.code is grpc.StatusCode.INVALID_ARGUMENT
        violations = bad.detail(error_details_pb2.BadRequest).field_violations
        assert [v.field for v in violations] == ["top_logprobs"]


async def test_outputs_the_contract_cannot_carry_are_counted_not_dropped(gw: Harness) -> None:
    directive = "[[sim:unknown-output=audio,annotation,reasoning,content-part]]"
    reply = await gw.stub.Complete(
        pb.CompleteRequest(messages=[user(f"Hi {directive}")]), metadata=auth()
    )
    assert reply.content  # the text parts of an array content are kept
    assert [(u.kind, u.count) for u in reply.unsupported_outputs] == [
        ("annotations.file_annotation", 1),
        ("content.sim_widget", 1),
        ("message.audio", 1),
        ("reasoning_details.reasoning.server_tool_call", 1),
    ]
    outcome = await stream(
        gw,
        pb.StreamCompleteRequest(
            messages=[user("Hi [[sim:unknown-output=audio,annotation,reasoning]]")]
        ),
    )
    assert outcome.error is None
    end = outcome.messages[-1].end
    assert [(u.kind, u.count) for u in end.unsupported_outputs] == [
        ("annotations.file_annotation", 1),
        ("delta.audio", 1),
        ("reasoning_details.reasoning.server_tool_call", 1),
    ]


async def test_a_file_annotation_sent_back_spares_parsing_the_file_again(gw: Harness) -> None:
    model = "meta-llama/llama-3.1-8b-instruct"  # cannot read files: OpenRouter parses them
    ask = user_parts(text("Summarise"), pdf(name="q3.pdf"))
    first = await gw.stub.Complete(pb.CompleteRequest(model=model, messages=[ask]), metadata=auth())
    assert len(first.annotations) == 1
    history = [
        ask,
        pb.Message(role=pb.ROLE_ASSISTANT, content=first.content, annotations=first.annotations),
        user_parts(text("And the risks?"), pdf(name="q3.pdf")),
    ]
    second = await gw.stub.Complete(
        pb.CompleteRequest(model=model, messages=history), metadata=auth()
    )
    assert second.content
    assert not second.annotations  # the same document was not parsed again
    sent = chat_requests(gw.sim)[-1].body["messages"][1]["annotations"]
    file = first.annotations[0].file
    assert sent == [
        {
            "type": "file",
            "file": {
                "hash": file.hash,
                "name": "q3.pdf",
                "content": [{"type": "text", "text": p.text} for p in file.content],
            },
        }
    ]
    # Annotations go on assistant messages only.
    error = await complete_error(
        gw,
        pb.CompleteRequest(
            model=model,
            messages=[pb.Message(role=pb.ROLE_USER, content="x", annotations=first.annotations)],
        ),
    )
    violations = error.detail(error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == ["messages[0].annotations"]
