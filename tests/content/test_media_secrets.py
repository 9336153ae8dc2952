"""Prompts, media bytes and URLs never reach a log line, span, metric or ledger row: inline
parts in and out, refused parts, and reasoning blocks sent back."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.logs import JsonFormatter
from service.simulator import SimulatorConfig, run_simulator
from tests.accounting.support import sqlite_rows
from tests.content.support import MARKER, audio, image, pdf, png, text, user_parts
from tests.harness import auth, serve_gateway_with_ledger, user
from tests.telemetry.support import Captured, attrs, point_attrs

PROMPT = "okapi-prompt-51d2 describes the picture"
SIGNED = "https://bucket.example.com/p.png?X-Amz-Signature=feedface-token-77"


def encodings(data: bytes) -> list[str]:
    """How bytes could show up in text: base64 (and a long stretch of it), raw."""
    whole = base64.b64encode(data).decode()
    return [whole, whole[len(whole) // 3 : len(whole) // 3 + 24], data.decode("latin-1")]


@pytest.fixture
def otel() -> Iterator[Captured]:
    captured = Captured.create()
    yield captured
    captured.shutdown()


async def test_no_prompt_media_or_url_reaches_logs_spans_metrics_or_ledger(
    otel: Captured, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    picture = png(seed=11)
    sound = b"RIFF" + MARKER * 4
    document = b"%PDF-1.4 " + MARKER * 3
    secrets = [PROMPT, MARKER.decode(), SIGNED, "feedface-token-77"]
    secrets += encodings(picture) + encodings(sound) + encodings(document)
    path = tmp_path / "usage.db"
    with caplog.at_level(logging.DEBUG):
        async with (
            run_simulator(SimulatorConfig(keepalive_comments=0)) as sim,
            serve_gateway_with_ledger(
                sim, path, telemetry=otel.telemetry, gateway={"max_part_bytes": 5000}
            ) as gw,
        ):
            parts = user_parts(
                text(PROMPT), image(picture), image(url=SIGNED), audio(sound), pdf(document)
            )
            reply = await gw.stub.Complete(
                pb.CompleteRequest(model="google/gemini-2.0-flash-001", messages=[parts]),
                metadata=auth(),
            )
            stream = gw.stub.StreamComplete(
                pb.StreamCompleteRequest(model="google/gemini-2.0-flash-001", messages=[parts]),
                metadata=auth(),
            )
            streamed = [m async for m in stream]
            painted = await gw.stub.Complete(
                pb.CompleteRequest(
                    model="google/gemini-2.5-flash-image",
                    messages=[user_parts(text(PROMPT), image(picture))],
                    output_modalities=[pb.MODALITY_IMAGE, pb.MODALITY_TEXT],
                ),
                metadata=auth(),
            )
            reasoned = await gw.stub.Complete(
                pb.CompleteRequest(
                    model="anthropic/claude-sonnet-4.5",
                    messages=[user(PROMPT)],
                    reasoning=pb.ReasoningConfig(effort=pb.REASONING_EFFORT_LOW),
                ),
                metadata=auth(),
            )
            back = [
                user(PROMPT),
                pb.Message(
                    role=pb.ROLE_ASSISTANT,
                    content=reasoned.content,
                    reasoning_details=reasoned.reasoning_details,
                ),
                user(PROMPT),
            ]
            await gw.stub.Complete(
                pb.CompleteRequest(model="anthropic/claude-sonnet-4.5", messages=back),
                metadata=auth(),
            )
            refusals = [
                # too big: refused before anything is stored or logged
                user_parts(text(PROMPT), image(picture + b"\x00" * 5000)),
                # a model that cannot see
                user_parts(text(PROMPT), image(picture)),
                # a URL the gateway does not accept
                user_parts(text(PROMPT), image(url=SIGNED.replace("https", "ftp"))),
            ]
            for model, message in zip(
                ("openai/gpt-4o-mini", "meta-llama/llama-3.1-8b-instruct", "openai/gpt-4o-mini"),
                refusals,
                strict=True,
            ):
                with pytest.raises(grpc.aio.AioRpcError):
                    await gw.stub.Complete(
                        pb.CompleteRequest(model=model, messages=[message]), metadata=auth()
                    )
            await gw.rows_written(8)
            rows = sqlite_rows(path)

    generated = painted.images[0].inline_data.data
    secrets += encodings(generated)
    secrets += [d.signature for d in reasoned.reasoning_details]
    secrets += [reasoned.reasoning, reply.content]
    assert streamed[-1].WhichOneof("event") == "end"
    assert len(rows) == 8
    assert rows[0]["image_inputs"] == 2  # counts are there, the media are not

    formatter = JsonFormatter()
    log_text = "\n".join(
        formatter.format(record)
        for record in caplog.records
        if not record.name.startswith(("service.simulator", "aiohttp.access"))
    )
    span_text = "\n".join(
        repr((s.name, attrs(s), [(e.name, e.attributes) for e in s.events], s.status.description))
        for s in otel.spans()
    )
    metric_text = "\n".join(
        repr(point_attrs(point)) for name in otel.metrics() for point in otel.points(name)
    )
    ledger_text = orjson.dumps(rows, default=str).decode()
    assert len(otel.server_spans()) == 8
    assert log_text.count('"msg":"rpc finished"') == 8  # the lines are there to search
    for secret in secrets:
        assert secret
        for where, written in (
            ("log", log_text),
            ("span", span_text),
            ("metric", metric_text),
            ("ledger", ledger_text),
        ):
            assert secret not in written, f"{secret[:30]!r} in a {where}"
