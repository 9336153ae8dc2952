"""GATEWAY_LEDGER_DURABILITY=sync: no status leaves the gateway before its call's row commits.

Read with a connection of the test's own right after each call returned, without flushing
and without waiting for the finish hook: in ``sync`` the row is already there.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from tests.accounting.support import acct_gateway, sqlite_rows
from tests.api.support import drain
from tests.harness import auth, user


async def test_in_sync_mode_every_status_follows_its_committed_row(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    async with acct_gateway(path, gateway={"ledger_durability": "sync"}) as gw:
        for n in range(10):
            await gw.stub.Complete(
                pb.CompleteRequest(messages=[user(f"Call {n} [[sim:tokens=3]]")]),
                metadata=(*auth(), ("x-request-id", f"unary-{n}")),
            )
            assert f"unary-{n}" in {r["request_id"] for r in sqlite_rows(path)}
        outcome = await drain(
            gw.stub.StreamComplete(
                pb.StreamCompleteRequest(messages=[user("Stream [[sim:tokens=5]]")]),
                metadata=(*auth(), ("x-request-id", "stream-0")),
            )
        )
        assert outcome.error is None
        [row] = [r for r in sqlite_rows(path) if r["request_id"] == "stream-0"]
        assert (row["status"], row["completion_tokens"]) == ("OK", 5)
        with pytest.raises(grpc.aio.AioRpcError):
            await gw.stub.Complete(
                pb.CompleteRequest(messages=[user("Fail [[sim:error=400]]")]),
                metadata=(*auth(), ("x-request-id", "failed-0")),
            )
        [row] = [r for r in sqlite_rows(path) if r["request_id"] == "failed-0"]
        assert row["status"] == "INVALID_ARGUMENT"
