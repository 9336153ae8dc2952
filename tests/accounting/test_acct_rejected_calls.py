"""Pre-auth work is bounded: a refused stranger's call holds nothing and adds no row of its own.

Calls refused before their caller is known are counted per minute, peer address, RPC and
reason in ``rejected_calls``; the ``usage_records`` rows are the callers' own. Before, 5,000
bad-key calls were 5,000 rows, and each left ~54 cyclic objects (the abort exception, its
traceback and frames) holding its request until the collector ran.
"""

from __future__ import annotations

import gc
import sqlite3
import tracemalloc
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from tests.accounting.support import acct_gateway, sqlite_rows
from tests.harness import Harness, auth, start_gateway

SERVICE = "/llmgateway.v1.CompletionService/"


def rejected_rows(path: Path) -> list[dict[str, object]]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM rejected_calls")]


def raw_unary(gw: Harness, rpc: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return gw.channel.unary_unary(
        SERVICE + rpc, request_serializer=bytes, response_deserializer=bytes
    )


async def refused(
    gw: Harness, rpc: str, body: bytes, metadata: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_unary(gw, rpc)(body, metadata=metadata)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_bad_key_calls_are_counted_together_not_a_row_each(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    bad, missing = 1500, 500
    async with acct_gateway(path) as gw:
        for _ in range(bad):
            await refused(gw, "ListModels", b"", auth("key-nobody"))
        for _ in range(missing):
            await refused(gw, "Complete", b"", ())
        await gw.stub.ListModels(pb.ListModelsRequest(), metadata=auth())
        await gw.rows_written(bad + missing + 1)
        usage = sqlite_rows(path)
        counted = rejected_rows(path)

    assert [(r["caller_id"], r["rpc"]) for r in usage] == [("alpha", "ListModels")]
    by_kind: dict[tuple[object, ...], int] = {}
    for row in counted:
        assert row["peer"] == "127.0.0.1"
        kind = (row["rpc"], row["reason"])
        by_kind[kind] = by_kind.get(kind, 0) + int(str(row["calls"]))
    assert by_kind == {
        ("ListModels", "API_KEY_INVALID"): bad,
        ("Complete", "API_KEY_MISSING"): missing,
    }
    # One row per kind and minute: two where the calls straddled a minute's turn.
    assert len(counted) <= 2 * len(by_kind)


async def test_a_rejected_call_holds_nothing_once_it_returns() -> None:
    # With the collector off, anything a refused call left in a reference cycle stays: each
    # request is 1 MB of its own on the server (the client sends one bytes object each time).
    payload = b"\x0a\xff\xff\x3f" + b"x" * 1_000_000
    calls = 40
    async with start_gateway() as gw:
        for _ in range(10):  # warm every path up
            await refused(gw, "Complete", payload, auth("key-nobody"))
        await gw.wait_finished(10)
        gc.collect()
        gc.disable()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(calls):
                await refused(gw, "Complete", payload, auth("key-nobody"))
            await gw.wait_finished(10 + calls)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
            gc.enable()
    # Held requests would be 40 MB; what is left is the harness's own list of finished calls.
    assert grown < 2_000_000, f"{grown:,} bytes left by {calls} refused calls"
