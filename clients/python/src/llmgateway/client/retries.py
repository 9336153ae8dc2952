"""Waiting out RESOURCE_EXHAUSTED when the gateway says how long to wait.

UNAVAILABLE is retried by the channel itself (see ``service_config``). RESOURCE_EXHAUSTED is
safe to retry only after the RetryInfo delay, which a service config cannot read: these
functions retry a call then, and only when the delay is at most ``max_delay`` (a daily budget
that resets in hours fails at once). Other failures are raised unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import grpc

from llmgateway.client.errors import error_details

_T = TypeVar("_T")


def call_with_retry(
    call: Callable[[], _T],
    *,
    attempts: int = 3,
    max_delay: timedelta = timedelta(seconds=60),
    sleep: Callable[[float], None] = time.sleep,
) -> _T:
    """Runs ``call`` (e.g. ``lambda: stub.Complete(request)``), retrying as described above."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except grpc.RpcError as error:
            delay = _wait_before_retry(error, attempt, attempts, max_delay)
            if delay is None:
                raise
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def call_with_retry_async(
    call: Callable[[], Awaitable[_T]],
    *,
    attempts: int = 3,
    max_delay: timedelta = timedelta(seconds=60),
) -> _T:
    """The asyncio form: ``await call_with_retry_async(lambda: stub.Complete(request))``."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except grpc.RpcError as error:
            delay = _wait_before_retry(error, attempt, attempts, max_delay)
            if delay is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _wait_before_retry(
    error: grpc.RpcError, attempt: int, attempts: int, max_delay: timedelta
) -> float | None:
    details = error_details(error)
    if attempt >= attempts or details.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    if details.retry_info is None or details.retry_info.retry_delay > max_delay:
        return None
    return details.retry_info.retry_delay.total_seconds()
