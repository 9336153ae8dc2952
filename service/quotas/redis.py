"""Quota store in Redis, shared by every gateway replica; each check is one atomic Lua script.

Algorithms (the memory store implements the same ones):

* **RPM and TPM: a weighted sliding-window log.** Each reservation is one entry, scored by the
  instant it was made, in a sorted set (``…:log``); its token count lives in a hash
  (``…:tok``) next to a running total (field ``=sum``). A check first drops entries 60 s or
  older (subtracting their tokens from the total), so it counts exactly the last 60 seconds:
  unlike fixed minute buckets, a burst at a minute boundary cannot double the rate. Trimming
  is amortised O(1); only a refusal walks the log, to compute ``retry_after_s`` exactly
  (when the oldest entries that must leave the window will have left it).
* **USD/day: per UTC day, dollars spent plus dollars held** (``…:day:<n>``, fields ``usd``
  and ``held``), in integer nano-dollars (Lua numbers are doubles, exact up to 2**53, i.e.
  about 9 million dollars; amounts are rounded up, so the budget errs on the safe side).
* **Reservations are leases.** The day hash holds ``r:<token>`` -> dollars reserved while a
  reservation is outstanding, and ``…:lease:<n>`` (a sorted set) scores each token by the
  instant its lease expires. Every script first drops the leases that expired (subtracting
  their dollars from ``held``), so the holds of a replica that died stop counting once its
  calls' leases end. ``settle`` deletes ``r:<token>``, releases the hold if the lease is
  still there and adds the actual dollars to ``usd``, so a second settle is a no-op and a
  late one (after its lease lapsed) still books what was spent. ``renew`` moves the expiry
  later, or takes the hold again if it had lapsed. A refusal's ``retry_after_s`` is when
  enough leases will have lapsed (they usually settle sooner), else the next UTC midnight.

All of a caller's keys share the hash tag ``{<caller id>}`` (one Redis Cluster slot) under a
configurable prefix. Every key has a TTL: the minute keys two minutes after the caller's
last reservation, the day and lease keys two days. Instants come from the gateway's clock
(``clock``), so replicas need NTP-synchronised clocks; a skew of s seconds shifts a replica's
window, and the expiry of its leases, by s.

When Redis cannot be reached within ``timeout_s`` the ``FailurePolicy`` decides: fail closed
(``ServiceUnavailableError``, reason ``QUOTA_STORE_UNAVAILABLE``) or fail open (admit, count,
warn once per ``warn_interval_s``).

Recovery: after a failure the store is *down*, and while down only one call at a time, at
most every ``probe_every_s``, tries Redis (the probe); the others get the failure policy at
once, so a dead or frozen Redis cannot add a timeout to every request. The first call that
gets an answer marks the store up again, for everyone. A pooled connection that broke while
Redis was away (a restart closes them all) is retried once on a fresh connection instead of
failing its call, so a restart costs no refusals after the first answer; the scripts are
idempotent, so a retry after a lost reply changes nothing.

A busy gateway is not a dead Redis. ``timeout_s`` is wall time, and a process short of CPU
(a burst of calls, a loaded machine) can take longer than that to read an answer Redis sent in
a millisecond. So a call that times out while Redis answered another call since it began (Redis
is up: this process was slow) is tried once more instead of marking the store down, which
would refuse every call for a probe interval. And the first burst after start-up is not the
costliest moment: ``warm`` loads the scripts and opens some connections before the gateway
serves (otherwise each of the first N concurrent calls would connect, run an EVALSHA that
fails NOSCRIPT, load the script and run it again, all within its timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.domain.callers import Caller
from service.domain.quotas import (
    DAY_S,
    DEFAULT_LEASE_S,
    MINUTE_S,
    Breach,
    FailurePolicy,
    QuotaLimit,
    QuotaStatus,
    Reservation,
    check_reservation_args,
    day_end,
    epoch_to_datetime,
    quota_exceeded,
    quota_status,
    utc_day,
)
from service.errors import Reason, ServiceUnavailableError

_log = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "llmgw:quota"
_NANO = Decimal(10) ** 9
_MAX_EXACT = 2**53
"""Largest integer a Lua number holds exactly."""
_WINDOW_MS = int(MINUTE_S * 1000)
_MINUTE_TTL_MS = 2 * _WINDOW_MS
_DAY_TTL_S = 2 * DAY_S
_NOT_BREACHED, _NEVER = -2, -1

# Helpers every script starts with. int() formats a Lua number as an integer string: Redis
# would turn a Lua number argument into "1e+15" and the like, which HINCRBY refuses.
# trim() drops log entries that left the window (score <= now - window) and their tokens
# from the running total; expire() drops lapsed leases and their dollars from `held`.
# unpack() is chunked: Lua's stack holds only a few thousand values.
_HELPERS = """
local function int(n) return string.format('%d', n) end
local function trim(log, tok, now, window)
  local expired = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
  if #expired == 0 then return end
  local freed = 0
  for i = 1, #expired, 500 do
    local chunk = {unpack(expired, i, math.min(i + 499, #expired))}
    local weights = redis.call('HMGET', tok, unpack(chunk))
    for j = 1, #weights do
      if weights[j] then freed = freed + tonumber(weights[j]) end
    end
    redis.call('HDEL', tok, unpack(chunk))
    redis.call('ZREM', log, unpack(chunk))
  end
  if freed ~= 0 then redis.call('HINCRBY', tok, '=sum', int(-freed)) end
end
local function expire(day, lease, now)
  local lapsed = redis.call('ZRANGEBYSCORE', lease, '-inf', now)
  if #lapsed == 0 then return end
  local freed = 0
  for i = 1, #lapsed, 500 do
    local chunk = {unpack(lapsed, i, math.min(i + 499, #lapsed))}
    local fields = {}
    for j = 1, #chunk do fields[j] = 'r:' .. chunk[j] end
    local amounts = redis.call('HMGET', day, unpack(fields))
    for j = 1, #amounts do
      if amounts[j] then freed = freed + tonumber(amounts[j]) end
    end
    redis.call('ZREM', lease, unpack(chunk))
  end
  if freed ~= 0 then redis.call('HINCRBY', day, 'held', int(-freed)) end
end
"""

# KEYS: log, tok, day, lease.  ARGV: now_ms, window_ms, token, rpm, tpm, tokens, usd_limit,
# usd, day_end_ms, minute_ttl_ms, day_ttl_s, lease_ms (limits are -1 when absent; dollars in
# nano-USD). Returns {1} when reserved, or {0, rpm_wait, tpm_wait, usd_wait, count, used,
# spent_and_held} with waits in ms, -2 for a limit not breached and -1 for one the request
# can never fit.
_RESERVE = (
    _HELPERS
    + """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local token = ARGV[3]
-- A retried call whose first try ran (its reply was lost) must not reserve twice.
if redis.call('HEXISTS', KEYS[3], 'r:' .. token) == 1 then return {1} end
local rpm, tpm, tokens = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local usd_limit, usd = tonumber(ARGV[7]), tonumber(ARGV[8])
local rate = rpm >= 0 or tpm >= 0
local count, used, spent, held = 0, 0, 0, 0
if rate then
  trim(KEYS[1], KEYS[2], now, window)
  count = redis.call('ZCARD', KEYS[1])
  used = tonumber(redis.call('HGET', KEYS[2], '=sum') or '0')
end
if usd_limit >= 0 then
  expire(KEYS[3], KEYS[4], now)
  spent = tonumber(redis.call('HGET', KEYS[3], 'usd') or '0')
  held = tonumber(redis.call('HGET', KEYS[3], 'held') or '0')
end

local rpm_wait, tpm_wait, usd_wait = -2, -2, -2
if rpm >= 0 and count + 1 > rpm then
  if rpm == 0 then rpm_wait = -1 else
    local e = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
    rpm_wait = tonumber(e[2]) + window - now
  end
end
if tpm >= 0 and used + tokens > tpm then
  if tokens > tpm then tpm_wait = -1 else
    local need, freed = used + tokens - tpm, 0
    local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    tpm_wait = window
    for i = 1, #entries, 2 do
      freed = freed + tonumber(redis.call('HGET', KEYS[2], entries[i]) or '0')
      if freed >= need then
        tpm_wait = tonumber(entries[i + 1]) + window - now
        break
      end
    end
  end
end
if usd_limit >= 0 and spent + held + usd > usd_limit then
  if usd > usd_limit then usd_wait = -1 else
    usd_wait = tonumber(ARGV[9]) - now
    if spent + usd <= usd_limit then
      local need, freed = spent + held + usd - usd_limit, 0
      local leases = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
      for i = 1, #leases, 2 do
        freed = freed + tonumber(redis.call('HGET', KEYS[3], 'r:' .. leases[i]) or '0')
        if freed >= need then
          usd_wait = math.min(usd_wait, tonumber(leases[i + 1]) - now)
          break
        end
      end
    end
  end
end
if rpm_wait ~= -2 or tpm_wait ~= -2 or usd_wait ~= -2 then
  return {0, rpm_wait, tpm_wait, usd_wait, count, used, spent + held}
end

if rate then
  redis.call('ZADD', KEYS[1], now, token)
  redis.call('HSET', KEYS[2], token, ARGV[6])
  redis.call('HINCRBY', KEYS[2], '=sum', ARGV[6])
  redis.call('PEXPIRE', KEYS[1], ARGV[10])
  redis.call('PEXPIRE', KEYS[2], ARGV[10])
end
local reserved = '-1'
if usd_limit >= 0 then
  redis.call('HINCRBY', KEYS[3], 'held', ARGV[8])
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[12]), token)
  redis.call('EXPIRE', KEYS[4], ARGV[11])
  reserved = ARGV[8]
end
redis.call('HSET', KEYS[3], 'r:' .. token, reserved)
redis.call('EXPIRE', KEYS[3], ARGV[11])
return {1}
"""
)

# KEYS: log, tok, day, lease.  ARGV: token, tokens, usd (nano-USD).
# Returns 1 if it settled something.
_SETTLE = (
    _HELPERS
    + """
local reserved = redis.call('HGET', KEYS[3], 'r:' .. ARGV[1])
if not reserved then return 0 end
redis.call('HDEL', KEYS[3], 'r:' .. ARGV[1])
local weight = redis.call('HGET', KEYS[2], ARGV[1])
if weight then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  local delta = tonumber(ARGV[2]) - tonumber(weight)
  if delta ~= 0 then redis.call('HINCRBY', KEYS[2], '=sum', int(delta)) end
end
reserved = tonumber(reserved)
if reserved >= 0 then
  -- The hold is released only if it had not lapsed; what was spent counts either way.
  if redis.call('ZREM', KEYS[4], ARGV[1]) == 1 and reserved ~= 0 then
    redis.call('HINCRBY', KEYS[3], 'held', int(-reserved))
  end
  if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[3], 'usd', ARGV[3]) end
end
return 1
"""
)

# KEYS: day, lease.  ARGV: token, expiry_ms, day_ttl_s.  Returns 1 if the lease is held.
_RENEW = """
local reserved = redis.call('HGET', KEYS[1], 'r:' .. ARGV[1])
if not reserved or tonumber(reserved) < 0 then return 0 end
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
if expiry then
  if tonumber(ARGV[2]) > tonumber(expiry) then
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  end
else
  -- Lapsed while its call still ran: hold it again.
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  if tonumber(reserved) ~= 0 then redis.call('HINCRBY', KEYS[1], 'held', reserved) end
end
return 1
"""

# KEYS: log, tok, day, lease.  ARGV: now_ms, window_ms.
# Returns {count, used, newest_ms, spent_and_held}.
_STATUS = (
    _HELPERS
    + """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
trim(KEYS[1], KEYS[2], now, window)
expire(KEYS[3], KEYS[4], now)
local count = redis.call('ZCARD', KEYS[1])
local used = tonumber(redis.call('HGET', KEYS[2], '=sum') or '0')
local newest = -1
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last == 2 then newest = tonumber(last[2]) end
local spent = tonumber(redis.call('HGET', KEYS[3], 'usd') or '0')
local held = tonumber(redis.call('HGET', KEYS[3], 'held') or '0')
return {count, used, newest, spent + held}
"""
)


class _StoreDownError(Exception):
    """Redis did not answer in time (or the store is backing off after such a failure)."""


def _to_nano(usd: Decimal, rounding: str = ROUND_CEILING) -> int:
    return min(int((usd * _NANO).to_integral_value(rounding=rounding)), _MAX_EXACT)


def _from_nano(nano: int) -> Decimal:
    return (Decimal(nano) / _NANO).normalize()


class RedisQuotaStore:
    """Quota counters in Redis; several replicas sharing one Redis share every limit."""

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        failure_policy: FailurePolicy = FailurePolicy.FAIL_CLOSED,
        timeout_s: float = 0.5,
        probe_every_s: float = 0.1,
        warn_interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._policy = failure_policy
        self._timeout_s = timeout_s
        self._probe_every_s = probe_every_s
        self._warn_interval_s = warn_interval_s
        self._clock = clock
        self._reserve_script = client.register_script(_RESERVE)
        self._settle_script = client.register_script(_SETTLE)
        self._renew_script = client.register_script(_RENEW)
        self._status_script = client.register_script(_STATUS)
        self._down = False
        self._answered_at = -float("inf")
        """``time.monotonic()`` of the last answer Redis gave any call."""
        self._probing = False
        self._next_probe = 0.0
        self._last_warning = -float("inf")
        self._failures_since_warning = 0
        self.store_failures = 0
        """Calls that found Redis unreachable (or did not try it while it was down)."""
        self.unchecked_admissions = 0
        """Requests admitted without a check under ``fail_open``."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        failure_policy: FailurePolicy = FailurePolicy.FAIL_CLOSED,
        timeout_s: float = 0.5,
        probe_every_s: float = 0.1,
        warn_interval_s: float = 60.0,
        max_connections: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> RedisQuotaStore:
        """A store with its own connection pool. The pool waits for a free connection when
        all are busy (the default pool would fail at once, which would look like an outage)."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One retry, at once and for a broken connection only: a connection Redis closed
            # (it restarted) is then replaced within the call. redis-py's default (3 retries
            # with backoff, timeouts too) would multiply the timeout on the request path.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        return cls(
            Redis.from_pool(pool),
            key_prefix=key_prefix,
            failure_policy=failure_policy,
            timeout_s=timeout_s,
            probe_every_s=probe_every_s,
            warn_interval_s=warn_interval_s,
            clock=clock,
        )

    async def reserve(
        self, caller: Caller, *, tokens: int, usd: Decimal, lease_s: float = DEFAULT_LEASE_S
    ) -> Reservation:
        check_reservation_args(tokens, usd, lease_s)
        limits = caller.limits
        now = self._clock()
        day = utc_day(now)
        token = os.urandom(16).hex()  # as unique as uuid4().hex, at a third of its cost
        rpm, tpm, budget = limits.requests_per_minute, limits.tokens_per_minute, limits.usd_per_day
        if rpm is None and tpm is None and budget is None:
            return Reservation(caller.id, token, 1, tokens, usd, now, day, tracked=False)
        now_ms = int(now * 1000)
        args: list[int | str] = [
            now_ms,
            _WINDOW_MS,
            token,
            -1 if rpm is None else rpm,
            -1 if tpm is None else tpm,
            tokens,
            -1 if budget is None else _to_nano(budget, ROUND_FLOOR),
            _to_nano(usd),
            int(day_end(day) * 1000),
            _MINUTE_TTL_MS,
            _DAY_TTL_S,
            max(1, round(lease_s * 1000)),
        ]
        try:
            reply = await self._run(self._reserve_script, self._keys(caller.id, day), args)
        except _StoreDownError as exc:
            if self._policy is FailurePolicy.FAIL_OPEN:
                self.unchecked_admissions += 1
                return Reservation(
                    caller.id, token, 1, tokens, usd, now, day, tracked=False, unchecked=True
                )
            raise self._unavailable() from exc
        if reply[0] == 1:
            return Reservation(caller.id, token, 1, tokens, usd, now, day, lease_s=lease_s)

        rpm_wait, tpm_wait, usd_wait, count, used, spent = (int(v) for v in reply[1:7])
        breaches: list[Breach] = []
        if rpm is not None and rpm_wait != _NOT_BREACHED:
            breaches.append(
                Breach(QuotaLimit.REQUESTS_PER_MINUTE, rpm, count, 1, _wait_s(rpm_wait))
            )
        if tpm is not None and tpm_wait != _NOT_BREACHED:
            breaches.append(
                Breach(QuotaLimit.TOKENS_PER_MINUTE, tpm, used, tokens, _wait_s(tpm_wait))
            )
        if budget is not None and usd_wait != _NOT_BREACHED:
            breaches.append(
                Breach(QuotaLimit.USD_PER_DAY, budget, _from_nano(spent), usd, _wait_s(usd_wait))
            )
        raise quota_exceeded(caller.id, breaches)

    async def settle(self, reservation: Reservation, *, tokens: int, usd: Decimal) -> None:
        check_reservation_args(tokens, usd)
        if not reservation.tracked:
            return
        keys = self._keys(reservation.caller_id, reservation.day)
        # A failure is logged (rate-limited) by _run; the reserved amounts then stay counted.
        with contextlib.suppress(_StoreDownError):
            await self._run(self._settle_script, keys, [reservation.token, tokens, _to_nano(usd)])

    async def renew(self, reservation: Reservation, *, lease_s: float) -> None:
        check_reservation_args(0, Decimal(0), lease_s)
        if not reservation.tracked:
            return
        _, _, day_key, lease_key = self._keys(reservation.caller_id, reservation.day)
        expiry_ms = round((self._clock() + lease_s) * 1000)
        with contextlib.suppress(_StoreDownError):
            await self._run(
                self._renew_script, [day_key, lease_key], [reservation.token, expiry_ms, _DAY_TTL_S]
            )

    async def release(self, reservation: Reservation) -> None:
        await self.settle(reservation, tokens=0, usd=Decimal(0))

    async def status(self, caller: Caller) -> QuotaStatus:
        now = self._clock()
        day = utc_day(now)
        try:
            reply = await self._run(
                self._status_script, self._keys(caller.id, day), [int(now * 1000), _WINDOW_MS]
            )
        except _StoreDownError as exc:
            raise self._unavailable() from exc
        count, used, newest_ms, spent_nano = (int(v) for v in reply[:4])
        return quota_status(
            caller,
            requests=count,
            tokens=used,
            window_reset=epoch_to_datetime(now if newest_ms < 0 else newest_ms / 1000 + MINUTE_S),
            spent=_from_nano(spent_nano),
            day=day,
        )

    async def warm(self, connections: int = 8) -> None:
        """Load the scripts and open ``connections`` pooled connections, so the first calls
        pay one round trip each. Best effort: an unreachable Redis shows at the first call,
        where the failure policy applies, as before."""
        scripts = (
            self._reserve_script,
            self._settle_script,
            self._renew_script,
            self._status_script,
        )
        try:
            async with asyncio.timeout(max(self._timeout_s, 1.0)):
                for script in scripts:
                    await self._client.script_load(script.script)
                await asyncio.gather(*(self._client.ping() for _ in range(connections)))
        except (RedisError, OSError, TimeoutError) as exc:
            _log.info("quota store (redis) not reachable at start-up: %s", type(exc).__name__)
            return
        self._answered_at = time.monotonic()

    async def close(self) -> None:
        await self._client.aclose()

    def _keys(self, caller_id: str, day: int) -> list[str]:
        base = f"{self._prefix}:{{{caller_id}}}"
        return [f"{base}:log", f"{base}:tok", f"{base}:day:{day}", f"{base}:lease:{day}"]

    async def _run(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[int | str]
    ) -> list[Any]:
        probe = False
        if self._down:
            if self._probing or time.monotonic() < self._next_probe:
                self._note_failure(None)
                raise _StoreDownError
            probe = self._probing = True
        began = time.monotonic()
        try:
            try:
                reply = await self._call(script, keys, args)
            except (RedisTimeoutError, TimeoutError):
                if self._answered_at <= began:
                    raise
                # Redis answered another call meanwhile: this process was too busy to read
                # its answer in time. Once more (the scripts are idempotent).
                reply = await self._call(script, keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down = True
            self._next_probe = time.monotonic() + self._probe_every_s
            self._note_failure(exc)
            raise _StoreDownError from exc
        finally:
            if probe:
                self._probing = False
        self._down = False
        self._answered_at = time.monotonic()
        return list(reply) if isinstance(reply, list) else [reply]

    async def _call(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[int | str]
    ) -> Any:
        async with asyncio.timeout(self._timeout_s):
            return await script(keys=keys, args=args)

    def _note_failure(self, exc: BaseException | None) -> None:
        self.store_failures += 1
        self._failures_since_warning += 1
        now = time.monotonic()
        if now - self._last_warning < self._warn_interval_s:
            return
        _log.warning(
            "quota store (redis) unreachable: %d failed call(s) since the last warning, "
            "policy %s, %d request(s) admitted unchecked so far (%s)",
            self._failures_since_warning,
            self._policy,
            self.unchecked_admissions,
            "not tried while down" if exc is None else f"{type(exc).__name__}: {exc}",
        )
        self._last_warning = now
        self._failures_since_warning = 0

    def _unavailable(self) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            "quota store unreachable: cannot check the caller's limits, try again shortly",
            reason=Reason.QUOTA_STORE_UNAVAILABLE,
            metadata={"store": "redis"},
            retry_after_s=max(self._probe_every_s, 1.0),
        )


def _wait_s(wait_ms: int) -> float | None:
    return None if wait_ms == _NEVER else max(wait_ms, 1) / 1000
