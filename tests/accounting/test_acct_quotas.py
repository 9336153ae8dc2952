"""Caller quotas through gRPC: budget, RPM and TPM refusals, shared Redis, Redis outages.

Each quota test runs against the in-process store and against a real Redis.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.callers import Caller, CallerLimits, hash_key
from service.simulator import run_simulator
from service.simulator.config import SimulatorConfig
from tests.accounting.support import acct_gateway, sqlite_rows
from tests.harness import (
    ALPHA_KEY,
    BETA_KEY,
    Harness,
    RichError,
    auth,
    rich_error,
    serve_gateway_with_ledger,
    user,
)

T = TypeVar("T")
CHAT_PATH = "/api/v1/chat/completions"
MODEL = "anthropic/claude-3.5-haiku"
"""$0.8 / $4 per million prompt / completion tokens: a reservation worth checking."""


def alpha(limits: CallerLimits) -> list[Caller]:
    return [
        Caller("alpha", hash_key(ALPHA_KEY), ("*",), limits),
        Caller("beta", hash_key(BETA_KEY), ("*",)),
    ]


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Gateway settings selecting the quota store."""
    if request.param == "memory":
        return {}
    url: str = request.getfixturevalue("redis_url")
    return {"redis_url": url}


async def outcome(call: Awaitable[T]) -> T | RichError:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        return rich_error(exc)


def refusals(results: list[Any]) -> list[RichError]:
    return [r for r in results if isinstance(r, RichError)]


def retry_delay_s(error: RichError) -> float:
    delay = error.detail(error_details_pb2.RetryInfo).retry_delay
    return float(delay.seconds + delay.nanos / 1e9)


def has_retry_info(error: RichError) -> bool:
    return any(isinstance(d, error_details_pb2.RetryInfo) for d in error.details)


def quota_violation(error: RichError) -> error_details_pb2.QuotaFailure.Violation:
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.info.reason == "QUOTA_EXCEEDED"
    assert error.info.domain == "llmgateway.v1"
    [violation] = error.detail(error_details_pb2.QuotaFailure).violations
    return violation


def chat_calls(gw: Harness) -> int:
    return sum(r.path == CHAT_PATH for r in gw.sim.state.requests)


# --- USD per day -----------------------------------------------------------------------------

MAX_TOKENS = 1000
# One reservation is ~1000 x $4/M + the prompt estimate ≈ $0.00402, and every answer runs to
# max_tokens, so it costs about what it reserved: 5 fit in $0.022, a 6th never does.
BUDGET = Decimal("0.022")
BUDGET_PROMPT = "Spend [[sim:tokens=5000]]"


async def test_a_budget_admits_only_what_fits_among_50_concurrent_requests(
    tmp_path: Path, store: dict[str, Any]
) -> None:
    path = tmp_path / "usage.db"
    request = pb.CompleteRequest(
        model=MODEL,
        messages=[user(BUDGET_PROMPT)],
        sampling=pb.SamplingParams(max_tokens=MAX_TOKENS),
    )
    async with acct_gateway(
        path, callers=alpha(CallerLimits(usd_per_day=BUDGET)), gateway=store
    ) as gw:
        results = await asyncio.gather(
            *(outcome(gw.stub.Complete(request, metadata=auth())) for _ in range(50))
        )
        seconds_to_midnight = (
            datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            + timedelta(days=1)
            - datetime.now(UTC)
        ).total_seconds()
        usage = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())
        generations = dict(gw.sim.state.generations)
        upstream = chat_calls(gw)
        await gw.rows_written(51)
        rows = sqlite_rows(path)

    served = [r for r in results if isinstance(r, pb.CompleteResponse)]
    refused = refusals(results)
    assert len(served) == 5
    assert len(refused) == 45
    assert upstream == 5  # refused calls never reach OpenRouter
    spent = sum((Decimal(repr(generations[r.id].total_cost)) for r in served), Decimal(0))
    assert all(r.usage.completion_tokens == MAX_TOKENS for r in served)

    reservations = set()
    for error in refused:
        violation = quota_violation(error)
        assert violation.subject == "caller:alpha"
        assert violation.description.startswith(f"usd_per_day limit {BUDGET} exceeded")
        assert error.info.metadata["limits"] == "usd_per_day"
        assert 0 < retry_delay_s(error) <= seconds_to_midnight + 1
        needs = re.search(r"this request needs ([0-9.]+)$", violation.description)
        assert needs is not None, violation.description
        reservations.add(Decimal(needs.group(1)))
    [reservation] = reservations
    assert Decimal("0.004") < reservation < Decimal("0.0045")
    assert spent <= BUDGET + reservation
    assert spent > BUDGET - reservation  # the budget was actually used, not just refused

    [usd] = usage.quotas
    assert usd.kind == pb.QUOTA_KIND_USD_PER_DAY
    assert usd.limit == float(BUDGET)
    assert usd.used == pytest.approx(float(spent))
    assert usd.remaining == pytest.approx(float(BUDGET - spent))
    statuses = sorted(r["status"] for r in rows if r["rpc"] == "Complete")
    assert statuses == ["OK"] * 5 + ["RESOURCE_EXHAUSTED"] * 45


# --- requests and tokens per minute --------------------------------------------------------


async def test_requests_per_minute_refuses_the_next_call_with_a_retry_delay(
    tmp_path: Path, store: dict[str, Any]
) -> None:
    callers = alpha(CallerLimits(requests_per_minute=3))
    async with acct_gateway(tmp_path / "usage.db", callers=callers, gateway=store) as gw:
        request = pb.CompleteRequest(messages=[user("Hi [[sim:tokens=2]]")])
        results = [await outcome(gw.stub.Complete(request, metadata=auth())) for _ in range(4)]
        other = await outcome(gw.stub.Complete(request, metadata=auth(BETA_KEY)))

    assert [type(r) for r in results] == [pb.CompleteResponse] * 3 + [RichError]
    error = results[3]
    assert isinstance(error, RichError)
    violation = quota_violation(error)
    assert violation.subject == "caller:alpha"
    assert violation.description.startswith("requests_per_minute limit 3 exceeded: 3 used")
    assert error.info.metadata["limits"] == "requests_per_minute"
    assert error.info.metadata["caller_id"] == "alpha"
    assert 55 < retry_delay_s(error) <= 60
    assert isinstance(other, pb.CompleteResponse)  # another caller's quota is its own


async def test_tokens_per_minute_refuses_when_the_window_is_full(
    tmp_path: Path, store: dict[str, Any]
) -> None:
    callers = alpha(CallerLimits(tokens_per_minute=1000))
    # Each answer runs to max_tokens, so each call keeps ~400 + prompt tokens in the window.
    request = pb.CompleteRequest(
        messages=[user("Count [[sim:tokens=5000]]")], sampling=pb.SamplingParams(max_tokens=400)
    )
    async with acct_gateway(tmp_path / "usage.db", callers=callers, gateway=store) as gw:
        results = [await outcome(gw.stub.Complete(request, metadata=auth())) for _ in range(3)]
        usage = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth())

    first, second, third = results
    assert isinstance(first, pb.CompleteResponse)
    assert isinstance(second, pb.CompleteResponse)
    assert isinstance(third, RichError)
    violation = quota_violation(third)
    used = first.usage.total_tokens + second.usage.total_tokens
    assert violation.description.startswith(
        f"tokens_per_minute limit 1000 exceeded: {used} used in the last 60 s"
    )
    assert third.info.metadata["limits"] == "tokens_per_minute"
    assert 55 < retry_delay_s(third) <= 60
    [tpm] = usage.quotas
    assert (tpm.kind, tpm.limit, tpm.used) == (pb.QUOTA_KIND_TOKENS_PER_MINUTE, 1000, used)


async def test_a_request_that_alone_exceeds_tokens_per_minute_gets_no_retry_delay(
    tmp_path: Path, store: dict[str, Any]
) -> None:
    callers = alpha(CallerLimits(tokens_per_minute=1000))
    request = pb.CompleteRequest(
        messages=[user("Too big")], sampling=pb.SamplingParams(max_tokens=2000)
    )
    async with acct_gateway(tmp_path / "usage.db", callers=callers, gateway=store) as gw:
        error = await outcome(gw.stub.Complete(request, metadata=auth()))
        upstream = chat_calls(gw)

    assert isinstance(error, RichError)
    violation = quota_violation(error)
    assert re.fullmatch(
        r"tokens_per_minute limit 1000 exceeded: this request alone needs 20\d\d",
        violation.description,
    )
    # Waiting cannot help: no RetryInfo, so clients do not retry it.
    assert not has_retry_info(error)
    assert upstream == 0


# --- a fleet sharing one Redis ---------------------------------------------------------------


async def test_two_gateways_on_one_redis_share_the_callers_requests_per_minute(
    tmp_path: Path, redis_url: str
) -> None:
    callers = alpha(CallerLimits(requests_per_minute=5))
    request = pb.CompleteRequest(messages=[user("Hi [[sim:tokens=2]]")])
    async with (
        run_simulator(SimulatorConfig(keepalive_comments=2)) as sim,
        serve_gateway_with_ledger(
            sim, tmp_path / "a.db", callers=callers, gateway={"redis_url": redis_url}
        ) as one,
        serve_gateway_with_ledger(
            sim, tmp_path / "b.db", callers=callers, gateway={"redis_url": redis_url}
        ) as two,
    ):
        results = []
        for _ in range(3):
            results.append(await outcome(one.stub.Complete(request, metadata=auth())))
            results.append(await outcome(two.stub.Complete(request, metadata=auth())))

    assert [type(r) for r in results] == [pb.CompleteResponse] * 5 + [RichError]
    error = results[5]
    assert isinstance(error, RichError)
    assert quota_violation(error).description.startswith(
        "requests_per_minute limit 5 exceeded: 5 used"
    )


# --- Redis unreachable -----------------------------------------------------------------------

DEAD_REDIS = "redis://127.0.0.1:1"


async def test_an_unreachable_redis_fails_closed_quickly_for_a_caller_with_limits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.db"
    callers = alpha(CallerLimits(requests_per_minute=100))
    request = pb.CompleteRequest(messages=[user("Hi [[sim:tokens=2]]")])
    async with acct_gateway(path, callers=callers, gateway={"redis_url": DEAD_REDIS}) as gw:
        started = time.monotonic()
        error = await outcome(gw.stub.Complete(request, metadata=auth()))
        took = time.monotonic() - started
        unlimited = await outcome(gw.stub.Complete(request, metadata=auth(BETA_KEY)))
        upstream = chat_calls(gw)
        await gw.rows_written(2)
        statuses = {r["caller_id"]: r["status"] for r in sqlite_rows(path)}

    assert isinstance(error, RichError)
    assert took < 2
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.info.reason == "QUOTA_STORE_UNAVAILABLE"
    assert 0 < retry_delay_s(error) <= 5
    # A caller without limits never needs the store.
    assert isinstance(unlimited, pb.CompleteResponse)
    assert upstream == 1
    assert statuses == {"alpha": "UNAVAILABLE", "beta": "OK"}


async def test_an_unreachable_redis_fails_open_when_configured(tmp_path: Path) -> None:
    callers = alpha(CallerLimits(requests_per_minute=1))
    request = pb.CompleteRequest(messages=[user("Hi [[sim:tokens=2]]")])
    settings = {"redis_url": DEAD_REDIS, "quota_failure_policy": "fail_open"}
    async with acct_gateway(tmp_path / "usage.db", callers=callers, gateway=settings) as gw:
        started = time.monotonic()
        # Unchecked: even the RPM limit of 1 cannot be enforced without the store.
        results = [await outcome(gw.stub.Complete(request, metadata=auth())) for _ in range(2)]
        took = time.monotonic() - started

    assert [type(r) for r in results] == [pb.CompleteResponse] * 2
    assert took < 2


async def test_get_usage_of_a_caller_without_limits_does_not_need_redis(tmp_path: Path) -> None:
    async with acct_gateway(
        tmp_path / "usage.db", callers=alpha(CallerLimits()), gateway={"redis_url": DEAD_REDIS}
    ) as gw:
        await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth(BETA_KEY))
        usage = await outcome(gw.stub.GetUsage(pb.GetUsageRequest(), metadata=auth(BETA_KEY)))

    assert isinstance(usage, pb.GetUsageResponse), usage
    assert usage.request_count == 1
    assert not usage.quotas
