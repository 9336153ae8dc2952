"""How telemetry follows the client's chat attempts, declared here so upstream imports no
observer: ``service.telemetry`` implements ``AttemptObserver`` and ``service.server`` plugs it in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from service.domain.completion import CallStats
from service.errors import UpstreamError


class ObservedRequest(Protocol):
    """What an observer reads of the request an attempt sends (chat or embeddings)."""

    @property
    def model(self) -> str: ...

    @property
    def trace_headers(self) -> Mapping[str, str]: ...


class UpstreamAttempt(Protocol):
    """One attempt of a chat call, as an observer follows it (for telemetry, a client span).

    Exactly one of ``succeeded``, ``retrying`` or ``failed`` is called per attempt.
    """

    @property
    def headers(self) -> Mapping[str, str]:
        """Trace context to send with this attempt; it overrides the request's."""
        ...

    def succeeded(self, stats: CallStats, finish_reason: str) -> None: ...

    def retrying(self, error: UpstreamError, delay_s: float) -> None:
        """The attempt failed with ``error`` and another follows after ``delay_s``."""
        ...

    def failed(self, error: BaseException) -> None:
        """The attempt failed and the call with it (or the caller left: ``CancelledError``)."""
        ...


class AttemptObserver(Protocol):
    """Watches model-call attempts (telemetry's client spans and attempt counters);
    ``operation`` is the GenAI operation, ``chat`` or ``embeddings``."""

    def attempt(
        self,
        request: ObservedRequest,
        number: int,
        *,
        url: str,
        stream: bool,
        operation: str = "chat",
    ) -> UpstreamAttempt: ...


class _Unwatched:
    """The attempt nobody watches (no observer, or not a chat call): adds and records nothing."""

    __slots__ = ()
    headers: Mapping[str, str] = {}

    def succeeded(self, stats: CallStats, finish_reason: str) -> None:
        pass

    def retrying(self, error: UpstreamError, delay_s: float) -> None:
        pass

    def failed(self, error: BaseException) -> None:
        pass


UNWATCHED: Final[UpstreamAttempt] = _Unwatched()

__all__ = ["UNWATCHED", "AttemptObserver", "ObservedRequest", "UpstreamAttempt"]
