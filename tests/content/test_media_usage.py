"""Usage of the new kinds: image and audio tokens and media counts in Usage, the ledger
(SQLite and PostgreSQL) and GetUsage; quota reservations that price media, so a budget is
not overshot by more than one reservation with images in the mix."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.accounting import (
    RESERVED_OUTPUT_IMAGES,
    estimate_prompt_tokens,
    worst_case,
)
from service.domain.callers import Caller, CallerLimits, hash_key
from service.domain.completion import (
    AudioPart,
    Blob,
    CompletionRequest,
    FilePart,
    ImagePart,
    MediaUrl,
    Message,
    Modality,
    Role,
    SamplingParams,
    TextPart,
)
from service.domain.image_size import IMAGE_INPUT_TOKENS
from service.domain.models import ModelInfo, ModelPricing
from service.domain.usage import MEDIA_COUNT_FIELDS, MediaTotals, UsageRecord
from service.simulator import SimulatorConfig
from tests.accounting.support import acct_gateway, postgres_rows, sqlite_rows
from tests.content.support import audio, image, pdf, png, text, user_parts
from tests.harness import ALPHA_KEY, auth, rich_error, start_gateway, user

PAINTER = "google/gemini-2.5-flash-image"
QUIET = SimulatorConfig(keepalive_comments=0)


def test_every_media_total_is_a_counter_of_the_record() -> None:
    record = UsageRecord(
        call_id="c",
        request_id="r",
        time=datetime.now(UTC),
        caller_id="a",
        rpc="R",
        requested_model="m",
        status="OK",
    )
    assert len(MEDIA_COUNT_FIELDS) == 15
    assert all(getattr(record, name) == 0 for name in MEDIA_COUNT_FIELDS)
    assert MediaTotals(*range(15)).images_out == MEDIA_COUNT_FIELDS.index("images_out")
    with pytest.raises(ValueError, match="image_input_bytes"):
        dataclasses.replace(record, image_input_bytes=-1)


async def test_media_counts_and_tokens_reach_usage_the_ledger_and_get_usage(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.db"
    picture = png(seed=5)
    sound = b"RIFF" + bytes(300)
    async with acct_gateway(path, sim_config=QUIET) as gw:
        first = await gw.stub.Complete(
            pb.CompleteRequest(
                model="google/gemini-2.0-flash-001",
                messages=[
                    user_parts(
                        text("Look and listen [[sim:unknown-output=audio]]"),
                        image(picture),
                        image(url="https://img.example.com/a.png"),
                        audio(sound),
                        pdf(url="https://files.example.com/x.pdf"),
                    )
                ],
            ),
            metadata=auth(),
        )
        second = await gw.stub.Complete(
            pb.CompleteRequest(
                model=PAINTER,
                messages=[user("Paint [[sim:images=2]]")],
                output_modalities=[pb.MODALITY_IMAGE, pb.MODALITY_TEXT],
            ),
            metadata=auth(),
        )
        totals = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())
        await gw.rows_written(3)
        rows = {row["rpc"] + str(i): row for i, row in enumerate(sqlite_rows(path))}
    # Usage: the simulator's counts (258 per image, one audio token per 64 bytes).
    assert first.usage.prompt_image_tokens == 2 * 258
    assert first.usage.prompt_audio_tokens == len(sound) // 64 + 1
    assert second.usage.completion_image_tokens == 2 * 1290
    one, two = (r for r in rows.values() if r["rpc"] == "Complete")
    assert (one["image_inputs"], one["image_input_bytes"]) == (2, len(picture))
    assert (one["audio_inputs"], one["audio_input_bytes"]) == (1, len(sound))
    assert (one["file_inputs"], one["file_input_bytes"]) == (1, 0)
    assert (one["video_inputs"], one["video_input_bytes"]) == (0, 0)
    assert one["prompt_image_tokens"] == 2 * 258
    assert one["prompt_audio_tokens"] == first.usage.prompt_audio_tokens
    assert (one["unsupported_outputs"], one["unsupported_kinds"]) == (1, "message.audio=1")
    assert (two["images_out"], two["completion_image_tokens"]) == (2, 2 * 1290)
    assert two["unsupported_kinds"] == ""
    # GetUsage sums them.
    assert totals.prompt_image_tokens == 2 * 258
    assert totals.prompt_audio_tokens == first.usage.prompt_audio_tokens
    assert totals.completion_image_tokens == 2 * 1290
    assert totals.images_generated == 2
    assert totals.unsupported_outputs == 1
    assert [(m.modality, m.parts, m.bytes) for m in totals.media_inputs] == [
        (pb.MODALITY_IMAGE, 2, len(picture)),
        (pb.MODALITY_FILE, 1, 0),
        (pb.MODALITY_AUDIO, 1, len(sound)),
    ]


async def test_postgres_keeps_the_media_columns(postgres_dsn: str) -> None:
    async with start_gateway(sim_config=QUIET, gateway={"ledger_dsn": postgres_dsn}) as gw:
        await gw.stub.Complete(
            pb.CompleteRequest(
                model=PAINTER,
                messages=[user_parts(text("Edit [[sim:unknown-output=annotation]]"), image())],
                output_modalities=[pb.MODALITY_IMAGE],
            ),
            metadata=auth(),
        )
        usage = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())
        await gw.rows_written(2)
        rows = await postgres_rows(postgres_dsn)
    (row,) = [r for r in rows if r["rpc"] == "Complete"]
    assert (row["image_inputs"], row["image_input_bytes"]) == (1, len(png()))
    assert row["images_out"] == 1
    assert row["unsupported_kinds"] == "annotations.file_annotation=1"
    assert usage.images_generated == 1
    assert [(m.modality, m.parts) for m in usage.media_inputs] == [(pb.MODALITY_IMAGE, 1)]


# --- the reservation -----------------------------------------------------------------------

VISION = ModelInfo(
    id="v/vision",
    context_length=100_000,
    pricing=ModelPricing(
        prompt=Decimal("0.000001"),
        completion=Decimal("0.000002"),
        image=Decimal("0.01"),
        image_output=Decimal("0.04"),
        image_token=Decimal("0.00003"),
        audio=Decimal("0.000005"),
    ),
    input_modalities=frozenset(Modality),
)


def request_of(*parts: Any, outputs: tuple[Modality, ...] = (), max_tokens: int = 100) -> Any:
    return CompletionRequest(
        model="v/vision",
        messages=(Message(Role.USER, "", parts=(TextPart("hi"), *parts)),),
        sampling=SamplingParams(max_tokens=max_tokens),
        output_modalities=outputs,
    )


def test_the_reservation_prices_each_kind_of_media() -> None:
    plain = request_of()
    text_tokens = estimate_prompt_tokens(plain)
    base = worst_case(plain, [VISION])
    assert base.usd == Decimal("0.000001") * text_tokens + Decimal("0.000002") * 100
    # An image: its price and a token bound, at the prompt price.
    picture = request_of(ImagePart(Blob("image/png", png())))
    assert (
        worst_case(picture, [VISION]).usd - base.usd
        == Decimal("0.01") + Decimal("0.000001") * IMAGE_INPUT_TOKENS
    )
    # Audio: a token per 16 bytes, at the dearer audio price.
    sound = request_of(AudioPart(b"a" * 1600, "wav"))
    assert worst_case(sound, [VISION]).usd - base.usd == Decimal("0.000005") * 100
    # A document cannot be bounded by its size: the whole context is reserved.
    document = request_of(FilePart(MediaUrl("https://x.example/a.pdf"), "a.pdf"))
    assert worst_case(document, [VISION]).usd == (
        Decimal("0.000001") * 100_000 + Decimal("0.000002") * 100
    )
    # Image output: four images, each its price and its tokens at the dearer token price.
    painting = request_of(outputs=(Modality.IMAGE, Modality.TEXT))
    per_image = Decimal("0.04") + 2_000 * Decimal("0.00003")
    assert worst_case(painting, [VISION]).usd - base.usd == RESERVED_OUTPUT_IMAGES * per_image
    assert worst_case(painting, [VISION]).tokens == base.tokens + RESERVED_OUTPUT_IMAGES * 2_000
    # The dearest candidate wins, media included.
    cheap = ModelInfo(id="c/cheap", context_length=100_000, pricing=ModelPricing())
    assert worst_case(picture, [cheap, VISION]) == worst_case(picture, [VISION])


BUDGET = Decimal("0.5")


async def test_a_budget_is_not_overshot_with_images_in_and_out(tmp_path: Path) -> None:
    limited = Caller("alpha", hash_key(ALPHA_KEY), ("*",), CallerLimits(usd_per_day=BUDGET))
    request = pb.CompleteRequest(
        model=PAINTER,
        messages=[user_parts(text("Repaint this [[sim:images=3]]"), image(png(seed=2)))],
        output_modalities=[pb.MODALITY_IMAGE, pb.MODALITY_TEXT],
        sampling=pb.SamplingParams(max_tokens=200),
    )

    async def one() -> Any:
        try:
            return await gw.stub.Complete(request, metadata=auth())
        except grpc.aio.AioRpcError as exc:
            return rich_error(exc)

    async with acct_gateway(tmp_path / "usage.db", sim_config=QUIET, callers=[limited]) as gw:
        results = await asyncio.gather(*(one() for _ in range(30)))
        generations = dict(gw.sim.state.generations)
    served = [r for r in results if isinstance(r, pb.CompleteResponse)]
    refused = [r for r in results if not isinstance(r, pb.CompleteResponse)]
    assert served
    assert refused
    assert all(r.info.reason == "QUOTA_EXCEEDED" for r in refused)
    needs = {
        Decimal(m.group(1))
        for r in refused
        if (m := re.search(r"this request needs ([0-9.]+)", r.message + str(r.details)))
    }
    (reservation,) = needs
    costs = [Decimal(repr(generations[r.id].total_cost)) for r in served]
    # Every answer (3 images, an input image) cost less than it reserved...
    assert all(Decimal(0) < cost <= reservation for cost in costs)
    assert all(len(r.images) == 3 for r in served)
    # ... so the budget cannot be overshot by more than one reservation.
    assert sum(costs) <= BUDGET + reservation
