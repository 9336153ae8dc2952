"""GetUsage: each caller sees its own totals and quotas, never another caller's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.callers import Caller, CallerLimits, hash_key
from service.simulator import GenerationRecord
from tests.accounting.support import acct_gateway
from tests.harness import ALPHA_KEY, BETA_KEY, auth, rich_error, user

ALPHA_LIMITS = CallerLimits(
    requests_per_minute=100, tokens_per_minute=50_000, usd_per_day=Decimal(1)
)
CALLERS = [
    Caller("alpha", hash_key(ALPHA_KEY), ("*",), ALPHA_LIMITS),
    Caller("beta", hash_key(BETA_KEY), ("*",)),
]


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def totals(generations: list[GenerationRecord]) -> tuple[int, int, float]:
    cost = sum((Decimal(repr(g.total_cost)) for g in generations), Decimal(0))
    return (
        sum(g.tokens_prompt for g in generations),
        sum(g.tokens_completion for g in generations),
        float(cost),
    )


async def test_each_caller_sees_only_its_own_usage_and_quotas(tmp_path: Path) -> None:
    since = timestamp(datetime.now(UTC) - timedelta(minutes=1))
    async with acct_gateway(tmp_path / "usage.db", callers=CALLERS) as gw:
        alpha_replies = [
            await gw.stub.Complete(
                pb.CompleteRequest(messages=[user(f"Alpha {n} [[sim:tokens={n + 3}]]")]),
                metadata=auth(ALPHA_KEY),
            )
            for n in range(2)
        ]
        with pytest.raises(grpc.aio.AioRpcError):  # refused before upstream: still a call
            await gw.stub.Complete(pb.CompleteRequest(), metadata=auth(ALPHA_KEY))
        beta_reply = await gw.stub.Complete(
            pb.CompleteRequest(
                model="anthropic/claude-3.5-haiku", messages=[user("Beta [[sim:tokens=11]]")]
            ),
            metadata=auth(BETA_KEY),
        )
        # The refused call's status goes out before its row is queued: wait for the row, so
        # the counts below do not depend on that race.
        await gw.wait_finished(4)
        request = pb.GetUsageRequest(start_time=since)
        alpha_first = await gw.stub.GetUsage(request, metadata=auth(ALPHA_KEY))
        alpha_second = await gw.stub.GetUsage(request, metadata=auth(ALPHA_KEY))
        beta_first = await gw.stub.GetUsage(request, metadata=auth(BETA_KEY))
        generations = gw.sim.state.generations
        alpha_generations = [generations[r.id] for r in alpha_replies]
        beta_generations = [generations[beta_reply.id]]

    # A GetUsage row is written when the call ends, so each call counts the earlier
    # GetUsage calls but not itself: 3 completions, then 3 + the first GetUsage.
    assert (alpha_first.caller_id, alpha_first.request_count) == ("alpha", 3)
    assert alpha_second.request_count == 4
    assert (beta_first.caller_id, beta_first.request_count) == ("beta", 1)

    for usage, own in ((alpha_first, alpha_generations), (beta_first, beta_generations)):
        prompt, completion, cost = totals(own)
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
        assert usage.cost_usd == pytest.approx(cost, rel=1e-12)
        assert usage.start_time == since
        assert since.ToDatetime(UTC) < usage.end_time.ToDatetime(UTC) <= datetime.now(UTC)
    assert alpha_second.cost_usd == alpha_first.cost_usd

    quotas = {q.kind: q for q in alpha_first.quotas}
    assert set(quotas) == {
        pb.QUOTA_KIND_REQUESTS_PER_MINUTE,
        pb.QUOTA_KIND_TOKENS_PER_MINUTE,
        pb.QUOTA_KIND_USD_PER_DAY,
    }
    rpm = quotas[pb.QUOTA_KIND_REQUESTS_PER_MINUTE]
    # The refused call never reserved anything; GetUsage itself is not rate limited.
    assert (rpm.limit, rpm.used, rpm.remaining) == (100, 2, 98)
    tpm = quotas[pb.QUOTA_KIND_TOKENS_PER_MINUTE]
    window_tokens = sum(r.usage.total_tokens for r in alpha_replies)
    assert (tpm.limit, tpm.used, tpm.remaining) == (50_000, window_tokens, 50_000 - window_tokens)
    usd = quotas[pb.QUOTA_KIND_USD_PER_DAY]
    assert usd.limit == 1
    assert usd.used == pytest.approx(alpha_first.cost_usd)
    assert usd.remaining == pytest.approx(1 - alpha_first.cost_usd)
    now = datetime.now(UTC)
    assert now < rpm.reset_time.ToDatetime(UTC) <= now + timedelta(seconds=60)
    assert usd.reset_time.ToDatetime(UTC) == (now + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    assert not beta_first.quotas  # beta has no limits


async def test_a_period_before_the_calls_counts_none_of_them(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    async with acct_gateway(tmp_path / "usage.db", callers=CALLERS) as gw:
        await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth())
        earlier = await gw.stub.GetUsage(
            pb.GetUsageRequest(
                start_time=timestamp(now - timedelta(hours=2)),
                end_time=timestamp(now - timedelta(hours=1)),
            ),
            metadata=auth(),
        )
        default = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())

    assert (earlier.request_count, earlier.prompt_tokens, earlier.cost_usd) == (0, 0, 0)
    assert default.request_count == 2
    assert default.start_time.ToDatetime(UTC) == now.replace(
        hour=0, minute=0, second=0, microsecond=0
    )


@pytest.mark.parametrize("gap", [timedelta(hours=-1), timedelta(0)], ids=["before", "equal"])
async def test_an_end_time_not_after_the_start_time_is_invalid(
    tmp_path: Path, gap: timedelta
) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)
    async with acct_gateway(tmp_path / "usage.db", callers=CALLERS) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await gw.stub.GetUsage(
                pb.GetUsageRequest(start_time=timestamp(start), end_time=timestamp(start + gap)),
                metadata=auth(),
            )

    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.info.reason == "INVALID_ARGUMENT"
    [violation] = error.detail(error_details_pb2.BadRequest).field_violations
    assert violation.field == "end_time"
    assert "start_time" in violation.description


@pytest.mark.parametrize("rpc", ["Complete", "StreamComplete"])
async def test_a_successful_call_is_counted_by_the_next_get_usage_without_waiting(
    tmp_path: Path, rpc: str
) -> None:
    # A successful call is accounted just after its answer goes out (not before): the
    # caller's very next RPC must still find it.
    async with acct_gateway(tmp_path / "usage.db", callers=CALLERS) as gw:
        for n in range(3):
            text = f"Call {n} [[sim:tokens=3]]"
            if rpc == "Complete":
                await gw.stub.Complete(
                    pb.CompleteRequest(messages=[user(text)]), metadata=auth(BETA_KEY)
                )
            else:
                stream = gw.stub.StreamComplete(
                    pb.StreamCompleteRequest(messages=[user(text)]), metadata=auth(BETA_KEY)
                )
                assert [m.WhichOneof("event") async for m in stream][-1] == "end"
            usage = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth(BETA_KEY))
            # Every RPC is a row: the n + 1 calls so far and the n GetUsage calls before this.
            assert usage.request_count == 2 * n + 1
