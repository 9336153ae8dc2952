"""OpenRouter's own text stays inside the gateway: a provider error that quotes the prompt back.

The simulator's ``400-echo`` answers HTTP 400 with the prompt quoted in ``error.message`` (an
excerpt) and in ``metadata.raw`` (in full). Through the whole gateway, for a unary call and a
stream, neither reaches the status message, the ErrorInfo metadata (or any detail), the
trailers, the ledger or a log line at INFO or above; the DEBUG log holds it capped and redacted.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import SimulatorConfig, run_simulator
from service.upstream.errors import UPSTREAM_DETAIL_CHARS
from tests.api.support import complete_error, stream_error
from tests.harness import UPSTREAM_KEY, RichError, serve_gateway_with_ledger, user

# Recognisable, and long enough that the raw body exceeds the log cap.
ECHOED = "violet-heron-4411 asks about the tides of the Bosphorus " * 8
MARKERS = ("violet-heron-4411", "Invalid content", "Provider returned error")


def _assert_clean(error: RichError) -> None:
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.info.reason == "UPSTREAM_BAD_REQUEST"
    assert error.message == "OpenRouter rejected the request (upstream status 400)"
    for marker in MARKERS:
        assert marker not in error.message
        for value in error.info.metadata.values():
            assert marker not in value
        for detail in error.details:
            assert marker.encode() not in detail.SerializeToString()


def _files_bytes(directory: Path) -> bytes:
    """Everything the ledger wrote (the database and any journal beside it)."""
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())


async def test_echoed_prompt_is_in_no_status_row_or_info_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    text = f"{ECHOED} [[sim:error=400-echo]]"
    with tempfile.TemporaryDirectory(prefix="llmgw-echo-") as tmp:
        ledger = Path(tmp) / "usage.sqlite3"
        async with (
            run_simulator(SimulatorConfig()) as sim,
            serve_gateway_with_ledger(sim, ledger, openrouter={"max_retries": 0}) as gw,
        ):
            unary = await complete_error(gw, pb.CompleteRequest(messages=[user(text)]))
            streamed = await stream_error(gw, pb.StreamCompleteRequest(messages=[user(text)]))
            await gw.rows_written(2)
            _assert_clean(unary)
            _assert_clean(streamed)
        stored = _files_bytes(Path(tmp))
    for marker in MARKERS:
        assert marker.encode() not in stored

    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert loud, "the calls logged nothing at INFO: the check below would prove nothing"
    for record in loud:
        line = record.getMessage() + repr(record.__dict__)
        for marker in MARKERS:
            assert marker not in line, record.getMessage()

    # An operator debugging at DEBUG finds OpenRouter's words, capped and redacted.
    details = [r for r in caplog.records if r.name == "service.upstream.errors"]
    assert len(details) == 2
    for record in details:
        assert record.levelno == logging.DEBUG
        assert "violet-heron-4411" in record.getMessage()
        assert UPSTREAM_KEY not in record.getMessage()
        for arg in record.args or ():
            assert not isinstance(arg, str) or len(arg) <= UPSTREAM_DETAIL_CHARS
