"""Content parts in: what each part becomes upstream, through a real gateway and the simulator."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import SimulatorConfig
from tests.api.support import chat_requests, stream
from tests.content.support import (
    MARKER,
    audio,
    data_url_bytes,
    image,
    pdf,
    png,
    sent_content,
    text,
    user_parts,
    video,
)
from tests.harness import Harness, auth, start_gateway, user


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(sim_config=SimulatorConfig(keepalive_comments=0)) as harness:
        yield harness


async def test_image_bytes_travel_as_a_data_url_byte_for_byte(gw: Harness) -> None:
    picture = png(seed=3)
    request = pb.CompleteRequest(
        messages=[user_parts(text("What is in this picture?"), image(picture))]
    )
    reply = await gw.stub.Complete(request, metadata=auth())
    assert reply.content
    content = sent_content(gw.sim)
    assert content[0] == {"type": "text", "text": "What is in this picture?"}
    assert content[1]["type"] == "image_url"
    assert set(content[1]["image_url"]) == {"url"}  # no detail unless asked
    assert data_url_bytes(content[1]["image_url"]["url"], "image/png") == picture
    # The image's tokens (258 in the simulator) are billed with the prompt.
    assert reply.usage.prompt_tokens > 258


async def test_image_url_and_detail_are_passed_on_and_never_fetched(gw: Harness) -> None:
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=png(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}/cat.png?sig=secret-token"
        request = pb.CompleteRequest(
            messages=[user_parts(text("Describe"), image(url=url, detail=pb.IMAGE_DETAIL_LOW))]
        )
        reply = await gw.stub.Complete(request, metadata=auth())
    finally:
        await runner.cleanup()
    assert reply.content
    assert sent_content(gw.sim)[1] == {
        "type": "image_url",
        "image_url": {"url": url, "detail": "low"},
    }
    assert hits == []  # neither the gateway nor the simulator fetched the caller's URL


async def test_file_audio_and_video_parts(gw: Harness) -> None:
    request = pb.CompleteRequest(
        model="google/gemini-2.0-flash-001",
        messages=[
            user_parts(
                text("Summarise all of these"),
                pdf(),
                pdf(url="https://files.example.com/q3.pdf", name="q3.pdf"),
                audio(b"RIFF" + MARKER, "MP3"),
                video(url="https://www.youtube.com/watch?v=sim"),
                video(data=b"\x00\x00\x00\x18ftypmp4" + MARKER),
            )
        ],
        file_parser=pb.FileParserOptions(pdf_engine=pb.PDF_ENGINE_CLOUDFLARE_AI),
    )
    await gw.stub.Complete(request, metadata=auth())
    body = chat_requests(gw.sim)[-1].body
    parts = body["messages"][0]["content"]
    assert parts[1]["type"] == "file"
    assert parts[1]["file"]["filename"] == "report.pdf"
    assert data_url_bytes(parts[1]["file"]["file_data"], "application/pdf") == (
        b"%PDF-1.4 " + MARKER
    )
    assert parts[2] == {
        "type": "file",
        "file": {"filename": "q3.pdf", "file_data": "https://files.example.com/q3.pdf"},
    }
    # Audio is raw base64 (no data: prefix) with a lower-case format, as OpenRouter wants it.
    assert parts[3] == {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(b"RIFF" + MARKER).decode(), "format": "mp3"},
    }
    assert parts[4] == {
        "type": "video_url",
        "video_url": {"url": "https://www.youtube.com/watch?v=sim"},
    }
    assert data_url_bytes(parts[5]["video_url"]["url"], "video/mp4").endswith(MARKER)
    assert body["plugins"] == [{"id": "file-parser", "pdf": {"engine": "cloudflare-ai"}}]


async def test_plain_content_stays_a_string_and_text_parts_become_an_array(gw: Harness) -> None:
    request = pb.CompleteRequest(
        messages=[
            pb.Message(role=pb.ROLE_SYSTEM, parts=[text("Be brief."), text("Answer in English.")]),
            user("Hello"),
        ]
    )
    await gw.stub.Complete(request, metadata=auth())
    messages = chat_requests(gw.sim)[-1].body["messages"]
    assert messages[0]["content"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Answer in English."},
    ]
    assert messages[1]["content"] == "Hello"  # today's text-only callers: unchanged
    assert "plugins" not in chat_requests(gw.sim)[-1].body


async def test_a_stream_takes_parts_too(gw: Harness) -> None:
    request = pb.StreamCompleteRequest(
        messages=[user_parts(text("What colour is it?"), image(png(seed=9)))],
        file_parser=pb.FileParserOptions(pdf_engine=pb.PDF_ENGINE_MISTRAL_OCR),
    )
    outcome = await stream(gw, request)
    assert outcome.error is None
    assert outcome.kinds[-1] == "end"
    assert outcome.content
    body = chat_requests(gw.sim)[-1].body
    assert data_url_bytes(body["messages"][0]["content"][1]["image_url"]["url"], "image/png") == (
        png(seed=9)
    )
    assert body["plugins"] == [{"id": "file-parser", "pdf": {"engine": "mistral-ocr"}}]


async def test_structured_output_takes_image_parts(gw: Harness) -> None:
    request = pb.CompleteStructuredRequest(
        # No native schemas here: the schema goes into the system message as instructions.
        model="anthropic/claude-3.5-haiku",
        schema_name="chat_reply_v1",
        messages=[
            pb.Message(role=pb.ROLE_SYSTEM, parts=[text("Describe images.")]),
            user_parts(text("What is this?"), image(png(seed=1))),
        ],
    )
    reply = await gw.stub.CompleteStructured(request, metadata=auth())
    assert reply.json
    messages = chat_requests(gw.sim)[-1].body["messages"]
    assert messages[1]["content"][1]["type"] == "image_url"
    # The schema instruction joins the system message's parts rather than replacing them.
    assert messages[0]["content"][0] == {"type": "text", "text": "Describe images."}
    assert len(messages[0]["content"]) == 2
    assert "JSON Schema" in messages[0]["content"][1]["text"]
