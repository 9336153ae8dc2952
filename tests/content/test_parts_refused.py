"""Bad parts: INVALID_ARGUMENT naming the part; parts a model cannot read: FAILED_PRECONDITION.

Every refusal happens before anything goes upstream, and no status echoes what was sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from pydantic import ValidationError

from service.config import GatewaySettings
from service.server import request_limits
from tests.api.support import assert_nothing_leaks, chat_requests, complete_error, stream_error
from tests.content.support import MARKER, audio, image, pdf, png, text, user_parts, video
from tests.harness import Harness, start_gateway, user

LIMITS = {"max_part_bytes": 1000, "max_media_bytes": 1500, "max_parts_per_message": 4}
SIGNED = "https://bucket.example.com/cat.png?X-Amz-Signature=deadbeef-token"


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(gateway=LIMITS) as harness:
        yield harness


def parts_request(*parts: pb.Part, role: pb.Role.ValueType = pb.ROLE_USER) -> dict[str, Any]:
    return {"messages": [user("first"), pb.Message(role=role, parts=list(parts))]}


P = "messages[1].parts"
CASES: list[Any] = [
    pytest.param(
        {"messages": [pb.Message(role=pb.ROLE_USER, content="hi", parts=[text("hi")])]},
        "messages[0].parts",
        id="content-and-parts",
    ),
    pytest.param(parts_request(pb.Part()), f"{P}[0]", id="part-unset"),
    pytest.param(parts_request(text("")), f"{P}[0].text", id="empty-text-part"),
    pytest.param(parts_request(pb.Part(image=pb.ImagePart())), f"{P}[0].image", id="no-source"),
    pytest.param(
        parts_request(image(url="data:image/png;base64,iVBORw0KGgo=")),
        f"{P}[0].image.url",
        id="data-url",
    ),
    pytest.param(
        parts_request(image(url="file:///etc/passwd")), f"{P}[0].image.url", id="file-url"
    ),
    pytest.param(
        parts_request(image(url="ftp://example.com/a.png")), f"{P}[0].image.url", id="ftp-url"
    ),
    pytest.param(
        parts_request(image(url="https:///no-host")), f"{P}[0].image.url", id="url-no-host"
    ),
    pytest.param(
        parts_request(image(url="https://example.com/" + "a" * 8200)),
        f"{P}[0].image.url",
        id="url-too-long",
    ),
    pytest.param(
        parts_request(image(mime="image/svg+xml")),
        f"{P}[0].image.inline_data.mime_type",
        id="svg",
    ),
    pytest.param(parts_request(image(b"")), f"{P}[0].image.inline_data.data", id="empty-image"),
    pytest.param(
        parts_request(image(b"x" * 1001)), f"{P}[0].image.inline_data.data", id="part-too-big"
    ),
    pytest.param(parts_request(image(b"x" * 800), pdf(b"y" * 800)), "messages", id="media-too-big"),
    pytest.param(parts_request(*[text("a")] * 5), P, id="too-many-parts"),
    pytest.param(
        parts_request(text("look"), image(), role=pb.ROLE_ASSISTANT),
        f"{P}[1]",
        id="assistant-image",
    ),
    pytest.param(parts_request(audio(fmt="midi")), f"{P}[0].audio.format", id="audio-format"),
    pytest.param(parts_request(audio(b"")), f"{P}[0].audio.data", id="audio-empty"),
    pytest.param(parts_request(pdf(name="")), f"{P}[0].file.filename", id="file-no-name"),
    pytest.param(
        parts_request(
            pb.Part(
                file=pb.FilePart(
                    filename="a.pdf", inline_data=pb.Blob(mime_type="pdf", data=b"%PDF")
                )
            )
        ),
        f"{P}[0].file.inline_data.mime_type",
        id="file-mime",
    ),
    pytest.param(
        parts_request(video(data=b"v", mime="video/x-flv")),
        f"{P}[0].video.inline_data.mime_type",
        id="video-mime",
    ),
]


@pytest.mark.parametrize(("fields", "field"), CASES)
async def test_bad_parts_name_the_field(gw: Harness, fields: dict[str, Any], field: str) -> None:
    before = len(chat_requests(gw.sim))
    for error in (
        await complete_error(gw, pb.CompleteRequest(**fields)),
        await stream_error(gw, pb.StreamCompleteRequest(**fields)),
    ):
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert error.info.reason == "INVALID_ARGUMENT"
        bad = error.detail(error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == [field]
        assert_nothing_leaks(error, (SIGNED, "deadbeef-token", "/etc/passwd", MARKER.decode()))
    assert len(chat_requests(gw.sim)) == before


async def test_a_signed_url_is_never_echoed(gw: Harness) -> None:
    error = await complete_error(
        gw, pb.CompleteRequest(**parts_request(image(url=SIGNED.replace("https", "gopher"))))
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert_nothing_leaks(error, ("deadbeef-token", "bucket.example.com"))


UNSUPPORTED: list[Any] = [
    # (model, fallbacks, parts, file_parser, field, refused model, modality)
    pytest.param(
        "meta-llama/llama-3.1-8b-instruct",
        [],
        [text("see"), image()],
        None,
        1,
        "meta-llama/llama-3.1-8b-instruct",
        "image",
        id="image-to-text-model",
    ),
    pytest.param(
        "openai/gpt-4o-mini",
        [],
        [audio()],
        None,
        0,
        "openai/gpt-4o-mini",
        "audio",
        id="audio-to-gpt-4o-mini",
    ),
    pytest.param(
        "anthropic/claude-3.5-haiku",
        [],
        [text("watch"), video(url="https://v.example/a.mp4")],
        None,
        1,
        "anthropic/claude-3.5-haiku",
        "video",
        id="video-to-haiku",
    ),
    pytest.param(
        "openai/gpt-4o-mini",
        ["mistralai/mistral-7b-instruct"],
        [image()],
        None,
        0,
        "mistralai/mistral-7b-instruct",
        "image",
        id="fallback-cannot-see",
    ),
    pytest.param(
        "meta-llama/llama-3.1-8b-instruct",
        [],
        [pdf()],
        pb.FileParserOptions(pdf_engine=pb.PDF_ENGINE_NATIVE),
        0,
        "meta-llama/llama-3.1-8b-instruct",
        "file",
        id="native-pdf-to-text-model",
    ),
]


@pytest.mark.parametrize(
    ("model", "fallbacks", "parts", "parser", "index", "refused", "modality"), UNSUPPORTED
)
async def test_a_part_the_model_cannot_read_is_refused_before_upstream(
    gw: Harness,
    model: str,
    fallbacks: list[str],
    parts: list[pb.Part],
    parser: pb.FileParserOptions | None,
    index: int,
    refused: str,
    modality: str,
) -> None:
    before = len(chat_requests(gw.sim))
    fields: dict[str, Any] = {
        "model": model,
        "fallback_models": fallbacks,
        "messages": [user("hello"), user_parts(*parts)],
    }
    if parser is not None:
        fields["file_parser"] = parser
    for error in (
        await complete_error(gw, pb.CompleteRequest(**fields)),
        await stream_error(gw, pb.StreamCompleteRequest(**fields)),
    ):
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION
        assert error.info.reason == "UNSUPPORTED_FEATURE"
        assert error.info.metadata["field"] == f"messages[1].parts[{index}]"
        assert error.info.metadata["model"] == refused
        assert error.info.metadata["modality"] == modality
        assert_nothing_leaks(error, (MARKER.decode(),))
    assert len(chat_requests(gw.sim)) == before


async def test_a_pdf_goes_to_any_model_unless_native_reading_is_asked(gw: Harness) -> None:
    # OpenRouter parses documents for models that cannot read them.
    request = pb.CompleteRequest(
        model="meta-llama/llama-3.1-8b-instruct", messages=[user_parts(text("sum up"), pdf())]
    )
    reply = await gw.stub.Complete(
        request, metadata=(("authorization", "Bearer key-alpha-CALLERSECRET"),)
    )
    assert reply.content


def test_media_limit_must_fit_the_grpc_message_limit() -> None:
    with pytest.raises(ValidationError, match="GATEWAY_MAX_MEDIA_BYTES"):
        GatewaySettings(max_media_bytes=4096, max_message_bytes=4096)
    limits = request_limits(GatewaySettings(max_media_bytes=4096, max_part_bytes=10_000))
    assert limits.max_part_bytes == 4096  # a part can never exceed the request's media limit
    defaults = request_limits(GatewaySettings())
    assert defaults.max_media_bytes == 20 * 1024 * 1024
    assert GatewaySettings().max_message_bytes > defaults.max_media_bytes
    assert png()  # the helper makes a real PNG
