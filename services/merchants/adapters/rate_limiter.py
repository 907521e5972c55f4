"""Per-key rate limits in Redis: one atomic Lua script per call (GCRA).

The generic cell rate algorithm keeps one number per key, the "theoretical arrival time"
(TAT): each accepted call pushes it forward by period/limit. A call is accepted while the
TAT stays within one period of now, so a key may burst up to its limit and then goes on
at a steady limit per minute. Unlike a fixed window (the seed's INCR + EXPIRE per minute)
it never lets 2x the limit through around a window boundary, and a refusal knows exactly
when the next call would pass: that is the RetryInfo the caller gets. The clock is
Redis's own, so replicas with drifting clocks share one view; refused calls change
nothing, so hammering a limited key does not push its recovery further away.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("interpay.merchants.rate_limit")

RATE_LIMITER_UNAVAILABLE = Counter(
    "interpay_rate_limiter_unavailable_total",
    "Calls let through without a rate-limit decision because Redis could not be reached",
)

_PERIOD_US = 60_000_000  # the limit is per minute; times are in microseconds

# KEYS[1]: the key's TAT. ARGV[1]: the limit per minute. Returns {0, 0} when accepted, or
# {1, microseconds until the call would be accepted} when refused.
_GCRA = """
local interval = math.floor(tonumber(ARGV[2]) / tonumber(ARGV[1]))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allowed_at = new_tat - tonumber(ARGV[2])
if allowed_at > now then
  return {1, allowed_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
return {0, 0}
"""


class RateLimiter:
    def __init__(self, client: Redis) -> None:
        self._script = client.register_script(_GCRA)

    async def acquire(self, key_id: uuid.UUID, limit_per_minute: int) -> timedelta | None:
        """None if the call may go ahead, else how long until it would.

        If Redis cannot be reached the call goes ahead (counted and logged): the limit
        protects capacity, and refusing every merchant's traffic because the limiter's
        store is down would turn a Redis outage into a payments outage."""
        try:
            refused, wait_us = await self._script(
                keys=[f"merchants:ratelimit:{key_id}"], args=[limit_per_minute, _PERIOD_US]
            )
        except RedisError as exc:
            RATE_LIMITER_UNAVAILABLE.inc()
            log.warning("rate limiter unavailable; call let through", extra={"error": type(exc).__name__})
            return None
        return timedelta(microseconds=int(wait_us)) if int(refused) else None
