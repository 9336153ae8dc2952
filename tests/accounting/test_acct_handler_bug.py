"""A bug in a handler: INTERNAL with ErrorInfo and a message that names no detail, one log
line with the traceback, and the call's row with what OpenRouter billed.

The bug is injected into the answer's conversion (``service.api.convert``), after the upstream
answered: the real server, the simulator and the ledger run as always.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.api import convert
from tests.accounting.support import acct_gateway, by_request_id, sqlite_rows
from tests.harness import auth, rich_error, user

SECRET = "bug-detail-7f3a"
"""In the exception's text: it must reach neither the caller nor the row."""


def metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    return (*auth(), ("x-request-id", request_id))


def broken(*args: object, **kwargs: object) -> object:
    raise RuntimeError(f"a bug ({SECRET})")


def check_internal(exc: grpc.aio.AioRpcError, request_id: str) -> None:
    error = rich_error(exc)
    assert error.code is grpc.StatusCode.INTERNAL
    assert (error.info.reason, error.info.metadata["request_id"]) == ("INTERNAL", request_id)
    assert SECRET not in error.message
    assert "RuntimeError" not in error.message


async def to_the_end(call: Any) -> None:
    """Await a unary call, or read a stream to its end."""
    if isinstance(call, grpc.aio.UnaryStreamCall):
        async for _ in call:
            pass
    else:
        await call


@pytest.mark.parametrize("rpc", ["Complete", "StreamComplete"])
async def test_a_handler_bug_is_internal_with_one_log_line_and_its_row(
    tmp_path: Path,
    rpc: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "usage.db"
    request_id = f"bug-{rpc}"
    prompt = "Hi [[sim:tokens=5]]"
    async with acct_gateway(path) as gw:
        if rpc == "Complete":
            monkeypatch.setattr(convert, "complete_response", broken)
            call: Any = gw.stub.Complete(
                pb.CompleteRequest(messages=[user(prompt)]), metadata=metadata(request_id)
            )
        else:
            monkeypatch.setattr(convert, "stream_response", broken)
            call = gw.stub.StreamComplete(
                pb.StreamCompleteRequest(messages=[user(prompt)]), metadata=metadata(request_id)
            )
        with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as raised:
            await to_the_end(call)
        [generation] = gw.sim.state.generations.values()
        await gw.rows_written(1)
        rows = by_request_id(sqlite_rows(path))

    check_internal(raised.value, request_id)
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.getMessage() == "unexpected error"
    assert line.exc_info is not None  # the traceback is the operator's, in the log
    row = rows[request_id]
    assert (row["status"], row["caller_id"], row["rpc"]) == ("INTERNAL", "alpha", rpc)
    assert row["generation_id"] == generation.id
    assert SECRET not in str(row)
    if rpc == "Complete":
        # The upstream had answered before the bug: its tokens and cost are booked.
        assert row["completion_tokens"] == generation.tokens_completion == 5
        assert Decimal(str(row["cost_usd"])) == Decimal(repr(generation.total_cost))
    else:
        # The stream broke at its first event, before its usage: the row has no cost yet,
        # which is what the reconciler looks for (it asks /generation).
        assert row["completion_tokens"] == generation.tokens_completion or (
            row["cost_usd"] is None and row["reconciled"] == 0
        )
