"""What callers send to the new surface (embedding inputs, a search prompt, cached prompt text,
domains to search, a session id) and what comes back (vectors, citations) never reaches a log
line, span, metric or ledger row."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.logs import JsonFormatter
from service.simulator import SimulatorConfig, run_simulator
from tests.accounting.support import sqlite_rows
from tests.harness import auth, serve_gateway_with_ledger
from tests.surface.support import EMBED_MODEL
from tests.telemetry.support import Captured, attrs, point_attrs

EMBED_TEXT = "capybara-embedding-83e1 about the quarterly numbers"
SEARCH_PROMPT = "gazelle-search-prompt-40af: results follow"
CACHED = "wombat-cached-handbook-9c2d " * 300
DOMAIN = "private-intranet-7f1e.example.com"
SESSION = "session-okapi-51d3"


@pytest.fixture
def otel() -> Iterator[Captured]:
    captured = Captured.create()
    yield captured
    captured.shutdown()


async def test_inputs_and_outputs_of_the_new_rpcs_stay_out_of_every_record(
    otel: Captured, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    path = tmp_path / "usage.db"
    with caplog.at_level(logging.DEBUG):
        async with (
            run_simulator(SimulatorConfig(keepalive_comments=0)) as sim,
            serve_gateway_with_ledger(sim, path, telemetry=otel.telemetry) as gw,
        ):
            vectors = await gw.stub.Embed(
                pb.EmbedRequest(model=EMBED_MODEL, inputs=[pb.EmbedInput(text=EMBED_TEXT)]),
                metadata=auth(),
            )
            searched = await gw.stub.Complete(
                pb.CompleteRequest(
                    messages=[pb.Message(role=pb.ROLE_USER, content=EMBED_TEXT)],
                    web_search=pb.WebSearchOptions(
                        search_prompt=SEARCH_PROMPT, allowed_domains=[DOMAIN]
                    ),
                    session_id=SESSION,
                ),
                metadata=auth(),
            )
            marked = pb.Message(
                role=pb.ROLE_SYSTEM,
                parts=[pb.Part(text=CACHED, cache_control=pb.CacheControl())],
            )
            for _ in range(2):
                await gw.stub.Complete(
                    pb.CompleteRequest(
                        model="anthropic/claude-sonnet-4.5",
                        messages=[marked, pb.Message(role=pb.ROLE_USER, content="Q")],
                    ),
                    metadata=auth(),
                )
            with pytest.raises(grpc.aio.AioRpcError):
                # refused (a chat model), after the text was read
                await gw.stub.Embed(
                    pb.EmbedRequest(
                        model="openai/gpt-4o-mini", inputs=[pb.EmbedInput(text=EMBED_TEXT)]
                    ),
                    metadata=auth(),
                )
            await gw.rows_written(5)
            rows = sqlite_rows(path)

    values = vectors.embeddings[0].values
    secrets = [EMBED_TEXT, SEARCH_PROMPT, CACHED.strip()[:40], DOMAIN, SESSION]
    secrets += [repr(values[0]), struct.pack("<4f", *values[:4]).hex()]
    secrets += [a.url_citation.content for a in searched.annotations][:1]
    assert rows[1]["web_search_requests"] == 1
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
    assert log_text.count('"msg":"rpc finished"') == 5
    for secret in secrets:
        assert secret
        for where, written in (
            ("log", log_text),
            ("span", span_text),
            ("metric", metric_text),
            ("ledger", ledger_text),
        ):
            assert secret not in written, f"{secret[:30]!r} in a {where}"
