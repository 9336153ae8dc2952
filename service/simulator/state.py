"""What the simulator saw and did: requests, disconnects, generations, fault counters.

Tests read these records in-process (``simulator_state(app)``) or over HTTP (``/_sim/...``)
and await them with ``wait_for_*`` instead of sleeping. The Authorization header is never
stored: a request only records whether it had one.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import orjson

_T = TypeVar("_T")

# Bounds memory in long benchmark runs; far more than any test looks at.
_MAX_GENERATIONS = 50_000


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One HTTP request as received. `time` is `time.monotonic()` at arrival.

    `headers` has lower-cased names and never includes Authorization; `body` is the parsed
    JSON (None when absent or not JSON); `generation_id` is set for chat completions.
    """

    id: str
    time: float
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    has_authorization: bool
    body: Any
    generation_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["query"] = dict(self.query)
        record["headers"] = dict(self.headers)
        return record


@dataclass(frozen=True, slots=True)
class DisconnectRecord:
    """A client that went away before the simulator finished answering.

    `time` is `time.monotonic()` when the simulator noticed; `tokens_sent` counts completion
    tokens already written; `phase` is where the handler was (delay, hang, stream, unary).
    """

    request_id: str
    generation_id: str | None
    time: float
    started: float
    tokens_sent: int
    phase: str
    streamed: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    """One generation, in the shape of `GET /api/v1/generation`."""

    id: str
    model: str
    provider_name: str
    created_at: str
    streamed: bool
    cancelled: bool
    latency_ms: int
    generation_time_ms: int
    finish_reason: str | None
    native_finish_reason: str | None
    tokens_prompt: int
    tokens_completion: int
    tokens_reasoning: int
    total_cost: float
    external_user: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "upstream_id": f"sim-{self.id}",
            "total_cost": self.total_cost,
            "usage": self.total_cost,
            "upstream_inference_cost": self.total_cost,
            "cache_discount": None,
            "created_at": self.created_at,
            "model": self.model,
            "app_id": None,
            "provider_name": self.provider_name,
            "streamed": self.streamed,
            "cancelled": self.cancelled,
            "latency": self.latency_ms,
            "moderation_latency": None,
            "generation_time": self.generation_time_ms,
            "finish_reason": self.finish_reason,
            "native_finish_reason": self.native_finish_reason,
            "tokens_prompt": self.tokens_prompt,
            "tokens_completion": self.tokens_completion,
            "native_tokens_prompt": self.tokens_prompt,
            "native_tokens_completion": self.tokens_completion,
            "native_tokens_reasoning": self.tokens_reasoning,
            "native_tokens_cached": 0,
            "num_media_prompt": None,
            "num_media_completion": None,
            "num_search_results": None,
            "origin": "",
            "is_byok": False,
            "external_user": self.external_user,
        }


class SimulatorState:
    """Mutable record of one simulator app. Not thread-safe: one event loop owns it."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.disconnects: list[DisconnectRecord] = []
        self.generations: OrderedDict[str, GenerationRecord] = OrderedDict()
        self.request_count = 0
        self._ids = itertools.count(1)
        self._attempts: dict[str, int] = {}
        self._json_first_attempts: dict[str, int] = {}
        self._prompt_cache: dict[str, float] = {}
        """Prompt-prefix digests -> when they expire (``time.monotonic()``)."""
        # Replaced on every change: waiters hold the old one, which is set exactly once.
        self._changed = asyncio.Event()

    def next_request_id(self) -> str:
        return f"req-{next(self._ids)}"

    def record_request(self, request: RecordedRequest) -> None:
        self.request_count += 1
        self.requests.append(request)
        self._notify()

    def count_request(self) -> None:
        """Fast mode: count the request without keeping it."""
        self.request_count += 1

    def record_disconnect(self, record: DisconnectRecord) -> None:
        self.disconnects.append(record)
        self._notify()

    def record_generation(self, record: GenerationRecord) -> None:
        self.generations[record.id] = record
        if len(self.generations) > _MAX_GENERATIONS:
            self.generations.popitem(last=False)
        self._notify()

    def count_attempt(self, key: str) -> int:
        """How many times this request was seen before (for `fail-times`)."""
        seen = self._attempts.get(key, 0)
        self._attempts[key] = seen + 1
        return seen

    def should_fail(self, body: Any, fail_times: int | None) -> bool:
        """Whether an ``error`` directive fails this request: always, or (``fail-times``) for
        the first N identical bodies; key order does not make two bodies differ."""
        if fail_times is None:
            return True
        key = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return self.count_attempt(key) < fail_times

    def is_first_json_attempt(self, key: str, message_count: int) -> bool:
        """True until the same conversation comes back with more messages (`json=wrong-once`)."""
        first = self._json_first_attempts.setdefault(key, message_count)
        return message_count <= first

    def prompt_cache_hit(self, digest: str, now: float) -> bool:
        expires = self._prompt_cache.get(digest)
        return expires is not None and expires > now

    def prompt_cache_store(self, digest: str, expires: float) -> None:
        """Store (or, on a hit, refresh) a cached prefix."""
        if len(self._prompt_cache) >= _MAX_GENERATIONS:
            self._prompt_cache.clear()
        self._prompt_cache[digest] = max(expires, self._prompt_cache.get(digest, 0.0))

    def reset(self) -> None:
        """Forget all records and counters (request ids keep increasing)."""
        self.requests.clear()
        self.disconnects.clear()
        self.generations.clear()
        self.request_count = 0
        self._attempts.clear()
        self._json_first_attempts.clear()
        self._prompt_cache.clear()
        self._notify()

    # `timeout=` (rather than the caller's asyncio.timeout, ASYNC109) keeps test code to one
    # line and guarantees a hung gateway fails the test instead of waiting for pytest-timeout.
    async def wait_for_request(
        self,
        predicate: Callable[[RecordedRequest], bool] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> RecordedRequest:
        """The first recorded request matching `predicate`, waiting for it if needed."""
        return await self._wait(lambda: _first(self.requests, predicate), timeout)

    async def wait_for_disconnect(
        self,
        predicate: Callable[[DisconnectRecord], bool] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> DisconnectRecord:
        """The first recorded disconnect matching `predicate`, waiting for it if needed."""
        return await self._wait(lambda: _first(self.disconnects, predicate), timeout)

    async def wait_for_generation(
        self,
        generation_id: str,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> GenerationRecord:
        """The generation with this id once the simulator has finished (or lost) it."""
        return await self._wait(lambda: self.generations.get(generation_id), timeout)

    async def _wait(self, find: Callable[[], _T | None], limit: float) -> _T:
        async with asyncio.timeout(limit):
            while True:
                found = find()
                if found is not None:
                    return found
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _first(records: list[_T], predicate: Callable[[_T], bool] | None) -> _T | None:
    for record in records:
        if predicate is None or predicate(record):
            return record
    return None
