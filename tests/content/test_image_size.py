"""An inline image's size from its header, and what it adds to the reservation: a large image
reserves Gemini's tiles, an image whose size cannot be read reserves the context, a URL the
fixed bound (the gateway fetches nothing)."""

from __future__ import annotations

import struct
import time
from decimal import Decimal

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.accounting import worst_case
from service.domain.callers import Caller, CallerLimits, hash_key
from service.domain.completion import (
    Blob,
    CompletionRequest,
    ImagePart,
    MediaUrl,
    Message,
    Modality,
    Role,
    SamplingParams,
    TextPart,
)
from service.domain.image_size import (
    IMAGE_INPUT_TOKENS,
    image_dimensions,
    image_tokens_bound,
)
from service.domain.models import ModelInfo, ModelPricing
from tests.api.support import chat_requests
from tests.content.support import image, png, text, user_parts
from tests.harness import ALPHA_KEY, auth, rich_error, start_gateway


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0"


def gif_header(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\0\0\0"


def jpeg(width: int, height: int, *, metadata_segments: int = 2) -> bytes:
    app = b"\xff\xe1" + struct.pack(">H", 18) + b"Exif\0\0" + b"\0" * 10
    frame = b"\xff\xc2" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app * metadata_segments + frame + b"\xff\xda\0\x02" + b"\xff\xd9"


def webp_lossy(width: int, height: int) -> bytes:
    body = b"VP8 " + b"\0" * 4 + b"\0\0\0" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
    return b"RIFF\0\0\0\0WEBP" + body


def webp_lossless(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    return b"RIFF\0\0\0\0WEBP" + b"VP8L" + b"\0" * 4 + b"\x2f" + struct.pack("<I", bits)


def webp_extended(width: int, height: int) -> bytes:
    size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF\0\0\0\0WEBP" + b"VP8X" + b"\0" * 8 + size


@pytest.mark.parametrize(
    "make", [png_header, gif_header, jpeg, webp_lossy, webp_lossless, webp_extended]
)
def test_every_accepted_format_tells_its_size(make: object) -> None:
    assert callable(make)
    assert image_dimensions(make(1234, 567)) == (1234, 567)


def test_a_real_png_tells_its_size() -> None:
    assert image_dimensions(png()) == (8, 8)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"x" * 10_000,  # not an image
        png_header(10, 10)[:20],  # cut inside the header
        jpeg(100, 100)[:-20],  # the frame header cut off
        jpeg(100, 100, metadata_segments=600),  # the frame header past the segments read
        b"\xff\xd8\xff\xda\0\x02\xff\xd9",  # a scan before any frame header
        b"RIFF\0\0\0\0WEBPVP8 \0\0\0\0",  # a lossy WebP without its frame tag
        png_header(0, 100),  # no pixels: no provider takes it
    ],
)
def test_an_unreadable_header_tells_nothing(data: bytes) -> None:
    assert image_dimensions(data) is None


def test_a_crafted_jpeg_costs_no_more_than_a_small_one() -> None:
    # 10 MiB of tiny segments: the reader stops after a bounded number of them.
    data = b"\xff\xd8" + (b"\xff\xfe\x00\x02") * (10 * 1024 * 1024 // 4)
    began = time.perf_counter()
    assert image_dimensions(data) is None
    assert time.perf_counter() - began < 0.05


def test_the_bound_follows_geminis_tiles_above_the_fixed_one() -> None:
    assert image_tokens_bound(384, 384) == IMAGE_INPUT_TOKENS
    assert image_tokens_bound(2304, 2304) == IMAGE_INPUT_TOKENS  # 9 tiles: 2,322 tokens
    assert image_tokens_bound(3840, 2160) == 5 * 3 * 258
    assert image_tokens_bound(16_000, 16_000) == 21 * 21 * 258


GEMINI = ModelInfo(
    id="google/vision",
    context_length=1_000_000,
    pricing=ModelPricing(prompt=Decimal("0.000001"), completion=Decimal("0.000002")),
    input_modalities=frozenset(Modality),
)


def _picture(part: ImagePart) -> CompletionRequest:
    return CompletionRequest(
        model=GEMINI.id,
        messages=(Message(Role.USER, "", parts=(TextPart("hi"), part)),),
        sampling=SamplingParams(max_tokens=10),
    )


def _image_tokens(part: ImagePart) -> int:
    blank = CompletionRequest(
        model=GEMINI.id,
        messages=(Message(Role.USER, "", parts=(TextPart("hi"),)),),
        sampling=SamplingParams(max_tokens=10),
    )
    return worst_case(_picture(part), [GEMINI]).tokens - worst_case(blank, [GEMINI]).tokens


def test_the_reservation_sees_an_inline_images_size() -> None:
    # A few bytes of PNG header that say 16,000 x 16,000 pixels: ~114,000 prompt tokens.
    huge = ImagePart(Blob("image/png", png_header(16_000, 16_000)))
    assert _image_tokens(huge) == 21 * 21 * 258
    small = ImagePart(Blob("image/png", png()))
    assert _image_tokens(small) == IMAGE_INPUT_TOKENS


def test_an_image_of_unknown_size_reserves_the_context_a_url_the_fixed_bound() -> None:
    unreadable = ImagePart(Blob("image/jpeg", jpeg(100, 100, metadata_segments=600)))
    prompt = worst_case(_picture(unreadable), [GEMINI]).tokens - 10
    assert prompt == GEMINI.context_length
    by_url = ImagePart(MediaUrl("https://images.example/a.png"))
    assert _image_tokens(by_url) == IMAGE_INPUT_TOKENS


async def test_a_huge_image_is_refused_by_a_budget_a_small_one_fits() -> None:
    # Gemini 2.0 Flash at $0.10 per million prompt tokens: the small image reserves ~$0.0003,
    # the 16,000-pixel square (a 33-byte header) ~$0.0114, over a $0.005 budget.
    budget = CallerLimits(usd_per_day=Decimal("0.005"))
    callers = [Caller("alpha", hash_key(ALPHA_KEY), ("*",), budget)]
    async with start_gateway(callers=callers) as gw:

        def ask(data: bytes) -> pb.CompleteRequest:
            return pb.CompleteRequest(
                model="google/gemini-2.0-flash-001",
                messages=[user_parts(text("What is this?"), image(data))],
                sampling=pb.SamplingParams(max_tokens=50),
            )

        await gw.stub.Complete(ask(png()), metadata=auth())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.stub.Complete(ask(png_header(16_000, 16_000)), metadata=auth())
        assert len(chat_requests(gw.sim)) == 1  # the refused call never went upstream
    error = rich_error(refused.value)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.info.reason == "QUOTA_EXCEEDED"
