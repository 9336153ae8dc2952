"""Quota stores: in-process (one replica) or Redis (a fleet sharing its limits)."""

from __future__ import annotations

from service.domain.quotas import FailurePolicy, QuotaStore
from service.quotas.memory import MemoryQuotaStore
from service.quotas.redis import DEFAULT_KEY_PREFIX, RedisQuotaStore

__all__ = ["MemoryQuotaStore", "RedisQuotaStore", "open_quota_store"]


def open_quota_store(
    redis_url: str | None,
    *,
    failure_policy: FailurePolicy = FailurePolicy.FAIL_CLOSED,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    timeout_s: float = 0.5,
) -> QuotaStore:
    """The Redis store when a URL is given (``redis://``, ``rediss://``, ``unix://``), else the
    in-process one. Connections are made lazily: an unreachable Redis shows at the first call,
    where ``failure_policy`` applies."""
    if redis_url:
        return RedisQuotaStore.from_url(
            redis_url, key_prefix=key_prefix, failure_policy=failure_policy, timeout_s=timeout_s
        )
    return MemoryQuotaStore()
