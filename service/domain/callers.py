"""Who may call the gateway: caller ids, key hashes, model allow-lists and limits."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from service.domain.policy import OPEN_POLICY, Policy


@dataclass(frozen=True, slots=True)
class CallerLimits:
    """Per-caller quotas; ``None`` means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    usd_per_day: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """One internal service allowed to call the gateway.

    Only the SHA-256 of its key is held; the key itself never enters the process's state.
    """

    id: str
    key_sha256: bytes | tuple[bytes, ...] = field(repr=False)
    """The SHA-256 of its key, or of each of its keys: while a key is rotated, the old and
    the new one are both accepted."""
    allowed_models: tuple[str, ...] = ("*",)
    limits: CallerLimits = CallerLimits()
    policy: Policy = OPEN_POLICY
    """What the caller may ask of OpenRouter: providers, data, prices, tools (see policy)."""

    def may_use(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.allowed_models)

    @property
    def key_digests(self) -> tuple[bytes, ...]:
        digests = self.key_sha256
        return digests if isinstance(digests, tuple) else (digests,)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class _Callers:
    """One consistent set of callers, swapped whole on reload."""

    by_id: Mapping[str, Caller]
    digests: tuple[tuple[bytes, Caller], ...]


def _index(callers: Iterable[Caller]) -> _Callers:
    listed = tuple(callers)
    return _Callers(
        by_id={caller.id: caller for caller in listed},
        digests=tuple((digest, caller) for caller in listed for digest in caller.key_digests),
    )


class CallerRegistry:
    """Finds the caller a presented key belongs to, comparing digests in constant time.

    ``replace`` swaps in a new set of callers atomically (one attribute assignment on the
    event loop): a call authenticates against the old set or the new one, never a mixture.
    """

    def __init__(self, callers: Iterable[Caller]) -> None:
        self._callers = _index(callers)

    def __len__(self) -> int:
        return len(self._callers.by_id)

    def get(self, caller_id: str) -> Caller | None:
        return self._callers.by_id.get(caller_id)

    def replace(self, callers: Iterable[Caller]) -> None:
        self._callers = _index(callers)

    def authenticate(self, presented_key: str) -> Caller | None:
        digest = hash_key(presented_key)
        found: Caller | None = None
        # Compare against every key of every caller, without an early exit, so the time taken
        # does not reveal which (or whether a) caller matched.
        for known, caller in self._callers.digests:
            if hmac.compare_digest(digest, known):
                found = caller
        return found
