"""Row identity is the gateway's: a caller's ``x-request-id`` is recorded, never a dedupe key.

Calls sharing one request id are each a row with the cost the simulator billed, and GetUsage
counts every one of them, in SQLite and in PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from tests.accounting.support import Row, acct_gateway, postgres_rows, sqlite_rows
from tests.harness import ALPHA_KEY, Harness, auth, user

CALLS = 6
SHARED_ID = "one-id-for-every-call"


def with_id(request_id: str, key: str = ALPHA_KEY) -> tuple[tuple[str, str], ...]:
    return (*auth(key), ("x-request-id", request_id))


async def paid_calls_sharing_one_id(gw: Harness) -> tuple[Decimal, pb.GetUsageResponse]:
    """CALLS paid calls with the same request id; their billed total and the next GetUsage."""
    replies = [
        await gw.stub.Complete(
            pb.CompleteRequest(messages=[user(f"Call {n} [[sim:tokens={n + 2}]]")]),
            metadata=with_id(SHARED_ID),
        )
        for n in range(CALLS)
    ]
    billed = sum(
        (Decimal(repr(gw.sim.state.generations[r.id].total_cost)) for r in replies), Decimal(0)
    )
    usage = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())
    return billed, usage


def assert_one_row_per_call(rows: Sequence[Row], billed: Decimal) -> None:
    shared = [r for r in rows if r["request_id"] == SHARED_ID]
    assert len(shared) == CALLS
    assert len({r["call_id"] for r in rows}) == len(rows)
    assert sum((Decimal(str(r["cost_usd"])) for r in shared), Decimal(0)) == billed


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_calls_sharing_a_request_id_each_have_a_row_and_all_count(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / "usage.db"
    gateway: dict[str, Any] = {}
    if backend == "postgres":
        gateway["ledger_dsn"] = request.getfixturevalue("postgres_dsn")
    async with acct_gateway(path, gateway=gateway) as gw:
        billed, usage = await paid_calls_sharing_one_id(gw)
        await gw.rows_written(CALLS + 1)
        dsn = gateway.get("ledger_dsn")
        rows = sqlite_rows(path) if dsn is None else await postgres_rows(dsn)

    assert billed > 0
    assert usage.request_count == CALLS
    assert Decimal(repr(usage.cost_usd)) == billed
    assert_one_row_per_call(rows, billed)


async def test_a_request_id_claimed_by_a_stranger_takes_nothing_from_the_paid_call(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.db"
    async with acct_gateway(path) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.stub.ListModels(pb.ListModelsRequest(), metadata=with_id("victim", "nope"))
        reply = await gw.stub.Complete(
            pb.CompleteRequest(messages=[user("Paid [[sim:tokens=4]]")]),
            metadata=with_id("victim"),
        )
        await gw.rows_written(2)
        rows = sqlite_rows(path)

    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    [paid] = [r for r in rows if r["caller_id"] == "alpha"]
    assert (paid["request_id"], paid["status"], paid["generation_id"]) == ("victim", "OK", reply.id)
    assert paid["cost_usd"] is not None
