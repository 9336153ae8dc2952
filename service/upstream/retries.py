"""The one retry loop of the OpenRouter client: attempts, jittered backoff, the budget.

Unary calls run whole inside it; a stream runs inside it from opening until its first event
(after that, an event has reached the caller and a failure is final). Whether a failure is
sent again is its class's ``resend`` flag; how long to wait is ``Retry-After`` (capped) when
OpenRouter gave one, else full-jitter exponential backoff. No wait crosses the budget.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from service.config import OpenRouterSettings
from service.domain.completion import CallStats
from service.errors import GatewayError, UpstreamError
from service.upstream.errors import deadline_error
from service.upstream.observer import UNWATCHED, UpstreamAttempt

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class Retrier:
    """Runs attempts until one succeeds, one fails for good, or the budget is gone.

    ``rng`` drives backoff jitter; a seeded ``random.Random`` makes it repeatable.
    """

    def __init__(self, settings: OpenRouterSettings, rng: random.Random) -> None:
        self._settings = settings
        self._rng = rng

    async def run(
        self,
        attempt: Callable[[UpstreamAttempt], Awaitable[_T]],
        budget_end: float,
        stats: CallStats,
        watch: Callable[[int], UpstreamAttempt] | None = None,
    ) -> _T:
        """``attempt(watched)`` until it returns; ``stats`` counts attempts and retries.

        ``watch(number)`` opens each attempt's observation; ``failed`` and ``retrying`` are
        called here, ``succeeded`` by the attempt itself (a stream succeeds only at its end).
        """
        retries = 0
        while True:
            stats.attempts += 1
            watched = UNWATCHED if watch is None else watch(stats.attempts)
            try:
                return await attempt(watched)
            except UpstreamError as exc:
                delay = self._next_delay(exc, retries, budget_end, watched)
            except BaseException as exc:
                watched.failed(exc)
                raise
            retries += 1
            stats.retries = retries
            await asyncio.sleep(delay)

    def fail(self, error: UpstreamError, watched: UpstreamAttempt) -> NoReturn:
        """Raise ``error`` as final (a stream's failure after its first event)."""
        self.scrub(error)
        watched.failed(error)
        raise error

    def scrub(self, error: GatewayError) -> None:
        """Last line of defence: our own key never leaves in a message or metadata value."""
        key = self._settings.api_key
        secret = key.get_secret_value() if key is not None else ""
        if not secret:
            return
        if secret in error.message:
            error.message = error.message.replace(secret, "[redacted]")
            error.args = (error.message,)
        for name, value in error.metadata.items():
            if secret in value:
                error.metadata[name] = value.replace(secret, "[redacted]")

    def _next_delay(
        self, error: UpstreamError, retries: int, budget_end: float, watched: UpstreamAttempt
    ) -> float:
        """The wait before retrying ``error``; raises it (or a deadline error) when it is final."""
        self.scrub(error)
        try:
            delay = self._retry_delay(error, retries, budget_end)
        except BaseException:
            watched.failed(error)
            raise
        if delay is None:
            watched.failed(error)
            raise error
        watched.retrying(error, delay)
        return delay

    def _retry_delay(self, error: UpstreamError, retries: int, budget_end: float) -> float | None:
        """The wait before retrying ``error``, or None to raise it as is.

        Raises DeadlineExceededError when the budget is already gone.
        """
        s = self._settings
        if not error.resend or retries >= s.max_retries:
            return None
        if error.retry_after_s is not None:
            delay = min(error.retry_after_s, s.retry_after_cap_ms / 1000)
        else:
            # Full jitter: spreads a burst of failing callers over the whole window.
            ceiling = min(s.backoff_max_ms, s.backoff_base_ms * 2**retries) / 1000
            delay = self._rng.uniform(0.0, ceiling)
        now = asyncio.get_running_loop().time()
        if now >= budget_end:
            raise deadline_error() from error
        if now + delay >= budget_end:
            # Sleeping would cross the deadline; the caller learns the real cause now.
            return None
        logger.info(
            "retrying OpenRouter call after %s (retry %d, wait %.3fs)",
            error.reason,
            retries + 1,
            delay,
        )
        return delay


__all__ = ["Retrier"]
