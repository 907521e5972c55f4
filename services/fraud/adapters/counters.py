"""The sliding-window counters in Redis: one sorted set per series, scored by the
transaction's time in milliseconds, one member per checked transaction (its reference is
in the member, so counting one reference twice only re-adds the same member).

A whole `CounterPlan` runs as one Lua script (one round trip, atomic): the writes first,
so each read includes this transaction, then the reads. Redis being slow or down must not hold up
payments: every round trip has a short deadline, and after a failure the counters are
skipped for a cool-down period, the check answering degraded instead of waiting on a
dead socket (see README, "When Redis is down").
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from services.fraud.domain.evidence import CounterPlan, Observations, Read, Series

log = logging.getLogger("interpay.fraud.counters")

KEY_PREFIX = "fraud:v1"


# KEYS: the writes' keys, then the reads' keys. ARGV: the time in ms, the number of
# writes, then (member, retention ms, cap, keep latest 0/1) per write, then (op, window
# ms) per read. Returns one answer per read: a count, the members of the window, or (for
# "last") the newest two members with their scores.
PLAN_SCRIPT = """
local at = tonumber(ARGV[1])
local writes = tonumber(ARGV[2])
local a = 3
for i = 1, writes do
  local k = KEYS[i]
  local retention = tonumber(ARGV[a + 1])
  if ARGV[a + 3] == '1' then
    redis.call('ZADD', k, 'GT', ARGV[1], ARGV[a])
  else
    redis.call('ZADD', k, ARGV[1], ARGV[a])
  end
  redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('(%d', at - retention))
  redis.call('ZREMRANGEBYRANK', k, 0, -(tonumber(ARGV[a + 2]) + 1))
  redis.call('PEXPIRE', k, retention + 60000)
  a = a + 4
end
local out = {}
for j = writes + 1, #KEYS do
  local k = KEYS[j]
  local op = ARGV[a]
  local low = string.format('(%d', at - tonumber(ARGV[a + 1]))
  if op == 'count' then
    out[#out + 1] = redis.call('ZCOUNT', k, low, ARGV[1])
  elseif op == 'last' then
    out[#out + 1] = redis.call('ZREVRANGEBYSCORE', k, ARGV[1], low, 'WITHSCORES', 'LIMIT', 0, 2)
  else
    out[#out + 1] = redis.call('ZRANGEBYSCORE', k, low, ARGV[1])
  end
  a = a + 2
end
return out
"""


def key(series: Series) -> str:
    return f"{KEY_PREFIX}:{series.kind}:{series.subject}:{series.value}"


def _amount_of(member: bytes, currency: str) -> int | None:
    """The amount of a `reference|currency|amount` member, if it is in `currency`."""
    _, member_currency, amount = member.decode().rsplit("|", 2)
    return int(amount) if member_currency == currency else None


def answer(read: Read, raw: Any) -> object:
    """Turns what Redis returned for one read into the value the rules expect."""
    if read.op == "count":
        return int(raw)
    if read.op == "sum":
        return sum(a for m in raw if (a := _amount_of(m, read.currency)) is not None)
    if read.op == "stats":
        amounts = [
            a for m in raw if m.decode() != read.exclude and (a := _amount_of(m, read.currency)) is not None
        ]
        if not amounts:
            return (0, 0.0, 0.0)
        mean = sum(amounts) / len(amounts)
        variance = sum((a - mean) ** 2 for a in amounts) / len(amounts)
        return (len(amounts), mean, math.sqrt(variance))
    # last: [member, score, member, score] as the script returns it
    for member, score in zip(raw[::2], raw[1::2], strict=True):
        if member.decode() != read.exclude:
            return (member.decode(), int(float(score)))
    return None


class Counters:
    """Runs counter plans against Redis. A server resource: it opens no connection at
    start, so the service starts (and answers degraded) while Redis is down."""

    def __init__(self, url: str, timeout_seconds: float = 0.25, cooldown_seconds: float = 2.0) -> None:
        self.client = redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_connect_timeout=timeout_seconds,
            socket_timeout=timeout_seconds,
        )
        self.timeout = timeout_seconds
        self.cooldown = cooldown_seconds
        self._down_until = 0.0
        self.failures = 0
        self._script = self.client.register_script(PLAN_SCRIPT)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.client.aclose()

    async def run(self, plan: CounterPlan) -> Observations | None:
        """The answers to the plan's reads, or None when Redis cannot be reached."""
        if time.monotonic() < self._down_until:
            return None
        try:
            raw = await asyncio.wait_for(self._execute(plan), self.timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self.failures += 1
            self._down_until = time.monotonic() + self.cooldown
            log.warning("velocity counters unreachable", extra={"error": repr(exc)})
            return None
        return {read: answer(read, value) for read, value in zip(plan.reads, raw, strict=True)}

    async def _execute(self, plan: CounterPlan) -> Sequence[Any]:
        keys = [key(w.series) for w in plan.writes] + [key(r.series) for r in plan.reads]
        args: list[Any] = [plan.at_ms, len(plan.writes)]
        for w in plan.writes:
            args += [w.member, w.retention_ms, w.cap, int(w.keep_latest)]
        for r in plan.reads:
            args += [r.op, r.window_ms]
        return await self._script(keys=keys, args=args)  # type: ignore[no-any-return]

    async def forget(self, members: Sequence[tuple[Series, str]]) -> None:
        """Takes a declined transaction back out of the history series; best effort."""
        if not members or time.monotonic() < self._down_until:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for series, member in members:
                pipe.zrem(key(series), member)
            await asyncio.wait_for(pipe.execute(), self.timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not forget a declined transaction", extra={"error": repr(exc)})
