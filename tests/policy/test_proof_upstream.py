"""Proof upstream: an answer served by a provider the caller's policy forbids is flagged (the
ledger row, a metric, the log lines), or withheld when the policy says so.

The simulator is made to misbehave with ``[[sim:serve-provider=…]]``: that provider serves,
whatever the ``provider`` object said.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from tests.accounting.support import acct_gateway, sqlite_rows
from tests.api.support import chat_requests, drain
from tests.harness import Harness, rich_error, start_gateway
from tests.policy.support import as_caller, ask, callers
from tests.telemetry.support import Captured, key, sums

POLICIES = {
    "flagged": 'allowed_providers = ["openai"]',
    "refused": 'allowed_providers = ["openai"]\nforbidden_provider_answers = "refuse"',
    "forbids": 'forbidden_providers = ["azure"]',
    "open": "",
}
MISBEHAVE = "Hello [[sim:serve-provider=azure]]"


@pytest.fixture
def otel() -> Iterator[Captured]:
    captured = Captured.create()
    yield captured
    captured.shutdown()


async def test_a_forbidden_provider_is_flagged_in_the_row_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "usage.sqlite3"
    async with acct_gateway(path, callers=callers(POLICIES)) as gw:
        reply = await gw.stub.Complete(ask(MISBEHAVE), metadata=as_caller("flagged"))
        # The answer is returned: the caller has it, the ledger has the breach.
        assert reply.provider == "Azure"
        assert reply.content
        assert chat_requests(gw.sim)[-1].body["provider"] == {"only": ["openai"]}
        fine = await gw.stub.Complete(ask(), metadata=as_caller("flagged"))
        assert fine.provider == "OpenAI"
        await gw.rows_written(2)
    rows = {row["provider"]: row for row in sqlite_rows(path)}
    [policy] = [c.policy for c in callers(POLICIES) if c.id == "flagged"]
    assert rows["Azure"]["policy_breach"] == "allowed_providers"
    assert rows["Azure"]["status"] == "OK"
    assert rows["Azure"]["policy_id"] == policy.id
    assert rows["OpenAI"]["policy_breach"] == ""
    assert rows["OpenAI"]["policy_id"] == policy.id

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "OpenRouter answered from a provider the caller's policy forbids"
    ]
    assert warnings[0].__dict__["rule"] == "allowed_providers"
    assert warnings[0].__dict__["answer"] == "returned"
    finished = [r.__dict__ for r in caplog.records if r.getMessage() == "rpc finished"]
    assert [line.get("policy_breach") for line in finished] == ["allowed_providers", None]
    assert {line["policy_id"] for line in finished} == {policy.id}


async def test_the_breach_metric_counts_by_caller_provider_and_rule(otel: Captured) -> None:
    async with start_gateway(callers=callers(POLICIES), telemetry=otel.telemetry) as gw:
        await gw.stub.Complete(ask(MISBEHAVE), metadata=as_caller("flagged"))
        await gw.stub.Complete(ask(MISBEHAVE), metadata=as_caller("forbids"))
        await gw.stub.Complete(ask(MISBEHAVE), metadata=as_caller("open"))  # no rule broken
        await gw.stub.Complete(ask(), metadata=as_caller("forbids"))
        await gw.wait_finished(4)
    assert sums(otel, "llmgateway.policy.breaches") == {
        key(
            **{
                "llmgateway.caller.id": "flagged",
                "llmgateway.upstream.provider": "Azure",
                "llmgateway.policy.rule": "allowed_providers",
            }
        ): 1,
        key(
            **{
                "llmgateway.caller.id": "forbids",
                "llmgateway.upstream.provider": "Azure",
                "llmgateway.policy.rule": "forbidden_providers",
            }
        ): 1,
    }


async def test_refuse_withholds_a_unary_answer_and_still_accounts_its_cost(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.sqlite3"
    async with acct_gateway(path, callers=callers(POLICIES)) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(ask(MISBEHAVE), metadata=as_caller("refused"))
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.PERMISSION_DENIED
        assert error.info.reason == "UPSTREAM_POLICY_BREACH"
        assert error.info.metadata["rule"] == "allowed_providers"
        assert error.info.metadata["provider"] == "azure"
        generation = chat_requests(gw.sim)[-1].generation_id
        assert generation is not None
        billed = await gw.sim.state.wait_for_generation(generation)
        await gw.rows_written(1)
    [row] = sqlite_rows(path)
    assert row["status"] == "PERMISSION_DENIED"
    assert row["policy_breach"] == "allowed_providers"
    assert row["provider"] == "Azure"
    # The generation happened and was billed: the ledger books it.
    assert Decimal(row["cost_usd"]) == Decimal(repr(billed.total_cost)) > 0


async def test_refuse_ends_a_stream_before_its_first_message(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    async with acct_gateway(path, callers=callers(POLICIES)) as gw:
        # Paced, so the simulator is still writing when the gateway closes the request.
        slow = MISBEHAVE + " [[sim:pace=50]]"
        request = pb.StreamCompleteRequest(messages=[pb.Message(role=pb.ROLE_USER, content=slow)])
        outcome = await drain(gw.stub.StreamComplete(request, metadata=as_caller("refused")))
        assert outcome.messages == [], "nothing of the answer was relayed"
        assert outcome.error is not None
        error = rich_error(outcome.error)
        assert error.code is grpc.StatusCode.PERMISSION_DENIED
        assert error.info.reason == "UPSTREAM_POLICY_BREACH"
        # The upstream request is closed at once, which stops the generation.
        lost = await gw.sim.state.wait_for_disconnect()
        assert lost.tokens_sent < 24
        await gw.rows_written(1)
    [row] = sqlite_rows(path)
    assert (row["status"], row["policy_breach"]) == ("PERMISSION_DENIED", "allowed_providers")
    assert row["generation_id"], "kept for reconciliation of what was generated"


async def test_a_flagged_stream_is_relayed_whole(gw: Harness) -> None:
    request = pb.StreamCompleteRequest(messages=[pb.Message(role=pb.ROLE_USER, content=MISBEHAVE)])
    outcome = await drain(gw.stub.StreamComplete(request, metadata=as_caller("flagged")))
    assert outcome.error is None
    assert outcome.messages[0].start.provider == "Azure"
    assert outcome.kinds[-1] == "end"
    [(record, _)] = await gw.wait_finished(1)
    assert record.policy_breach == "allowed_providers"


async def test_structured_answers_are_checked_too(gw: Harness) -> None:
    request = pb.CompleteStructuredRequest(
        schema_name="chat_reply_v1",
        messages=[pb.Message(role=pb.ROLE_USER, content=MISBEHAVE)],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.CompleteStructured(request, metadata=as_caller("refused"))
    assert rich_error(caught.value).info.reason == "UPSTREAM_POLICY_BREACH"
    reply = await gw.stub.CompleteStructured(request, metadata=as_caller("flagged"))
    assert reply.provider == "Azure"
    records = [record for record, _ in await gw.wait_finished(2)]
    assert [r.policy_breach for r in records] == ["allowed_providers", "allowed_providers"]


@pytest.fixture
async def gw() -> AsyncIterator[Harness]:
    async with start_gateway(callers=callers(POLICIES)) as harness:
        yield harness
