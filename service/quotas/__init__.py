"""Quota stores: in-process (one replica) or Redis (a fleet sharing its limits)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.config import needs_extra
from service.domain.quotas import FailurePolicy, QuotaStore
from service.quotas.memory import MemoryQuotaStore

if TYPE_CHECKING:
    from service.quotas.redis import RedisQuotaStore

__all__ = ["MemoryQuotaStore", "RedisQuotaStore", "open_quota_store"]


def __getattr__(name: str) -> object:
    # RedisQuotaStore needs redis (the 'redis' extra): imported only when asked for.
    if name == "RedisQuotaStore":
        from service.quotas.redis import RedisQuotaStore

        return RedisQuotaStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_quota_store(
    redis_url: str | None,
    *,
    failure_policy: FailurePolicy = FailurePolicy.FAIL_CLOSED,
    key_prefix: str | None = None,
    timeout_s: float = 0.5,
) -> QuotaStore:
    """The Redis store when a URL is given (``redis://``, ``rediss://``, ``unix://``), else the
    in-process one. Connections are made lazily: an unreachable Redis shows at the first call,
    where ``failure_policy`` applies."""
    if redis_url:
        with needs_extra("redis", "the Redis quota store (GATEWAY_REDIS_URL)"):
            from service.quotas.redis import DEFAULT_KEY_PREFIX, RedisQuotaStore
        return RedisQuotaStore.from_url(
            redis_url,
            key_prefix=DEFAULT_KEY_PREFIX if key_prefix is None else key_prefix,
            failure_policy=failure_policy,
            timeout_s=timeout_s,
        )
    return MemoryQuotaStore()
