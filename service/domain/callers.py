"""Who may call the gateway: caller ids, key hashes, model allow-lists and limits."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal


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
    key_sha256: bytes = field(repr=False)
    allowed_models: tuple[str, ...] = ("*",)
    limits: CallerLimits = CallerLimits()

    def may_use(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.allowed_models)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class CallerRegistry:
    """Finds the caller a presented key belongs to, comparing digests in constant time."""

    def __init__(self, callers: Iterable[Caller]) -> None:
        self._callers: tuple[Caller, ...] = tuple(callers)
        self._by_id: Mapping[str, Caller] = {caller.id: caller for caller in self._callers}

    def __len__(self) -> int:
        return len(self._callers)

    def get(self, caller_id: str) -> Caller | None:
        return self._by_id.get(caller_id)

    def authenticate(self, presented_key: str) -> Caller | None:
        digest = hash_key(presented_key)
        found: Caller | None = None
        # Compare against every caller, without an early exit, so the time taken does not
        # reveal which (or whether a) caller matched.
        for caller in self._callers:
            if hmac.compare_digest(digest, caller.key_sha256):
                found = caller
        return found
