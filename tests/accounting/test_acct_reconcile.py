"""A stream the caller cancelled gets its real cost from the reconciler, through the service."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from tests.accounting.support import acct_gateway, by_request_id, sqlite_rows
from tests.harness import auth, user


async def test_reconciler_replaces_a_cancelled_streams_unknown_cost_by_the_generation_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.db"
    async with acct_gateway(path) as gw:
        start_of_test = timestamp_pb2.Timestamp()
        start_of_test.GetCurrentTime()
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(
                model="anthropic/claude-3.5-haiku",
                messages=[user("Tell a long story [[sim:tokens=300]] [[sim:pace=15]]")],
            ),
            metadata=(*auth(), ("x-request-id", "acct-reconcile")),
        )
        start = await call.read()
        assert isinstance(start, pb.StreamCompleteResponse)
        for _ in range(3):
            delta = await call.read()
            assert isinstance(delta, pb.StreamCompleteResponse)
            assert delta.HasField("delta")
        call.cancel()
        [(_, code)] = await gw.wait_finished(1)
        # The simulator records a lost stream's generation (billed for the tokens it sent).
        generation = await gw.sim.state.wait_for_generation(start.start.id)
        await gw.rows_written(1)
        [before] = sqlite_rows(path)
        usage_before = await gw.stub.GetUsage(
            pb.GetUsageRequest(start_time=start_of_test), metadata=auth()
        )

        assert await gw.server.reconciler.run_once() == 1
        after = by_request_id(sqlite_rows(path))["acct-reconcile"]
        # Reconciled rows are done: a second round finds nothing to do.
        assert await gw.server.reconciler.run_once() == 0
        usage_after = await gw.stub.GetUsage(
            pb.GetUsageRequest(start_time=start_of_test), metadata=auth()
        )

    assert code == grpc.StatusCode.CANCELLED
    assert generation.cancelled
    assert 3 <= generation.tokens_completion < 300
    expected_cost = Decimal(repr(generation.total_cost))
    assert expected_cost > 0

    assert before["request_id"] == "acct-reconcile"
    assert (before["status"], before["cancelled"], before["reconciled"]) == ("CANCELLED", 1, 0)
    assert before["generation_id"] == generation.id
    assert before["cost_usd"] is None

    assert after["reconciled"] == 1
    assert (after["status"], after["cancelled"]) == ("CANCELLED", 1)
    assert after["generation_id"] == generation.id
    assert Decimal(after["cost_usd"]) == expected_cost
    assert after["prompt_tokens"] == generation.tokens_prompt > 0
    assert after["completion_tokens"] == generation.tokens_completion
    assert after["served_model"] == "anthropic/claude-3.5-haiku"
    # Split by kind at the served model's catalog prices (Anthropic bills haiku as listed).
    assert before["cost_prompt_usd"] is None
    prompt_usd = generation.tokens_prompt * Decimal("0.0000008")
    completion_usd = generation.tokens_completion * Decimal("0.000004")
    assert prompt_usd + completion_usd == expected_cost
    assert Decimal(after["cost_prompt_usd"]) == prompt_usd
    assert Decimal(after["cost_completion_usd"]) == completion_usd
    assert after["cost_other_usd"] is None
    assert [(c.kind, Decimal(c.cost_usd_decimal)) for c in usage_after.costs] == [
        (pb.COST_KIND_PROMPT, prompt_usd),
        (pb.COST_KIND_COMPLETION, completion_usd),
    ]

    # GetUsage sums known costs only: the cancelled stream counts from reconciliation on.
    assert usage_before.cost_usd == 0
    assert usage_before.completion_tokens == 0
    assert usage_after.cost_usd == float(expected_cost)
    assert usage_after.completion_tokens == generation.tokens_completion
    assert usage_after.prompt_tokens == generation.tokens_prompt


async def test_reconciler_prices_a_stream_cut_upstream(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    async with acct_gateway(path) as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(
                messages=[user("Cut me [[sim:tokens=10]] [[sim:drop-after=4]]")]
            ),
            metadata=(*auth(), ("x-request-id", "acct-cut")),
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in call:
                pass
        await gw.rows_written(1)
        [before] = sqlite_rows(path)
        generation = gw.sim.state.generations[before["generation_id"]]
        assert await gw.server.reconciler.run_once() == 1
        [after] = sqlite_rows(path)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # Truncated, not cancelled: the usage chunk never came, so the cost is unknown...
    assert (before["status"], before["cancelled"], before["cost_usd"]) == ("UNAVAILABLE", 0, None)
    # ...until OpenRouter's record of the generation fills it in.
    assert generation.tokens_completion == 4
    assert after["reconciled"] == 1
    assert Decimal(after["cost_usd"]) == Decimal(repr(generation.total_cost)) > 0
    assert after["completion_tokens"] == 4
