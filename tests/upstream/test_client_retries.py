"""Retries: which failures, how long between attempts, and never past the deadline."""

from __future__ import annotations

import itertools
import random

import pytest

from service.domain.completion import CallStats, StreamEvent, StreamFinished
from service.errors import (
    DeadlineExceededError,
    StreamTruncatedError,
    UpstreamBadRequestError,
    UpstreamPaymentError,
    UpstreamProtocolError,
    UpstreamRateLimitError,
    UpstreamUnavailableError,
)
from service.simulator import RunningSimulator
from service.upstream import OpenRouterClient

from .conftest import ClientFactory, content_words, deadline_in, drain, request


def chat_times(sim: RunningSimulator) -> list[float]:
    return [r.time for r in sim.state.requests if r.path.endswith("/chat/completions")]


async def test_fail_twice_then_succeed(client: OpenRouterClient, sim: RunningSimulator) -> None:
    stats = CallStats()
    completion = await client.complete(
        request("[[sim:error=503]] [[sim:fail-times=2]] [[sim:retry-after=0.01]]"),
        deadline=deadline_in(5),
        stats=stats,
    )
    assert completion.content
    assert (stats.attempts, stats.retries) == (3, 2)
    assert len(chat_times(sim)) == 3
    assert stats.generation_id == completion.id


async def test_stream_retries_before_anything_is_relayed(
    client: OpenRouterClient, sim: RunningSimulator
) -> None:
    stats = CallStats()
    events: list[StreamEvent] = [
        e
        async for e in client.stream(
            request("[[sim:error=429]] [[sim:fail-times=1]] [[sim:retry-after=0.01]]"),
            deadline=deadline_in(5),
            stats=stats,
        )
    ]
    assert isinstance(events[-1], StreamFinished)
    assert (stats.attempts, stats.retries, stats.relayed) == (2, 1, True)


async def test_retry_after_is_honoured(client: OpenRouterClient, sim: RunningSimulator) -> None:
    await client.complete(
        request("[[sim:error=429]] [[sim:fail-times=1]] [[sim:retry-after=0.3]]"),
        deadline=deadline_in(5),
    )
    first, second = chat_times(sim)
    assert 0.3 <= second - first < 0.6


async def test_retry_after_is_capped(make_client: ClientFactory, sim: RunningSimulator) -> None:
    client = make_client(retry_after_cap_ms=100)
    await client.start()
    await client.complete(
        request("[[sim:error=429]] [[sim:fail-times=1]] [[sim:retry-after=30]]"),
        deadline=deadline_in(5),
    )
    first, second = chat_times(sim)
    assert 0.1 <= second - first < 0.4


async def test_full_jitter_backoff_without_retry_after(
    make_client: ClientFactory, sim: RunningSimulator
) -> None:
    client = make_client(seed=7, backoff_base_ms=100, backoff_max_ms=150)
    await client.start()
    stats = CallStats()
    await client.complete(
        request("[[sim:error=500]] [[sim:fail-times=2]]"), deadline=deadline_in(5), stats=stats
    )
    assert stats.retries == 2
    # The same seed gives the same waits: uniform(0, 0.1) then uniform(0, min(0.15, 0.2)).
    rng = random.Random(7)
    expected = [rng.uniform(0, 0.1), rng.uniform(0, 0.15)]
    times = chat_times(sim)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, wait in zip(gaps, expected, strict=True):
        assert wait <= gap < wait + 0.15


async def test_gives_up_after_max_retries(client: OpenRouterClient, sim: RunningSimulator) -> None:
    stats = CallStats()
    with pytest.raises(UpstreamUnavailableError) as info:
        await client.complete(request("[[sim:error=502]]"), deadline=deadline_in(5), stats=stats)
    assert info.value.status == 502
    assert (stats.attempts, stats.retries) == (3, 2)
    assert len(chat_times(sim)) == 3


@pytest.mark.parametrize(
    ("directive", "cls"),
    [
        ("[[sim:error=400]]", UpstreamBadRequestError),
        ("[[sim:error=402]]", UpstreamPaymentError),
        ("[[sim:error=413]]", UpstreamBadRequestError),
        ("[[sim:malformed]]", UpstreamProtocolError),
    ],
)
async def test_no_retry_on_caller_errors(
    client: OpenRouterClient, sim: RunningSimulator, directive: str, cls: type[Exception]
) -> None:
    stats = CallStats()
    with pytest.raises(cls):
        await client.complete(request(directive), deadline=deadline_in(5), stats=stats)
    assert (stats.attempts, stats.retries) == (1, 0)
    assert len(chat_times(sim)) == 1


async def test_deadline_shorter_than_retry_after_raises_promptly(
    make_client: ClientFactory, sim: RunningSimulator
) -> None:
    client = make_client(retry_after_cap_ms=10_000)
    await client.start()
    started = deadline_in(0)
    with pytest.raises(UpstreamRateLimitError) as info:
        await client.complete(
            request("[[sim:error=429]] [[sim:retry-after=5]]"), deadline=deadline_in(0.5)
        )
    assert deadline_in(0) - started < 0.2
    assert info.value.retry_after_s == 5
    assert len(chat_times(sim)) == 1


async def test_budget_gone_before_retry_is_deadline_exceeded(
    client: OpenRouterClient, sim: RunningSimulator
) -> None:
    # The first attempt alone outlives the deadline (delay=300 ms, deadline 150 ms).
    with pytest.raises(DeadlineExceededError):
        await client.complete(
            request("[[sim:delay=300]] [[sim:error=503]]"), deadline=deadline_in(0.15)
        )


async def test_unary_socket_drop_is_retried_as_connection_failure(
    client: OpenRouterClient, sim: RunningSimulator
) -> None:
    stats = CallStats()
    with pytest.raises(UpstreamUnavailableError) as info:
        await client.complete(request("[[sim:drop-after=0]]"), deadline=deadline_in(5), stats=stats)
    assert info.value.reason == "UPSTREAM_CONNECTION_FAILED"
    assert stats.attempts == 3


async def test_no_retry_once_a_stream_event_was_relayed(
    client: OpenRouterClient, sim: RunningSimulator
) -> None:
    stats = CallStats()
    seen: list[StreamEvent] = []
    stream = client.stream(request("[[sim:drop-after=3]]"), deadline=deadline_in(5), stats=stats)
    with pytest.raises(StreamTruncatedError):
        await drain(stream, seen)
    assert content_words(seen) == 3
    assert (stats.attempts, stats.retries, stats.relayed) == (1, 0, True)
    assert len(chat_times(sim)) == 1


async def test_mid_stream_error_after_relay_is_not_retried(
    client: OpenRouterClient, sim: RunningSimulator
) -> None:
    stats = CallStats()
    with pytest.raises(UpstreamUnavailableError):
        async for _ in client.stream(
            request("[[sim:mid-stream-error]]"), deadline=deadline_in(5), stats=stats
        ):
            pass
    assert stats.attempts == 1
    assert len(chat_times(sim)) == 1
