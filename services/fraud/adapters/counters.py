"""The sliding-window counters in Redis: one sorted set per series, scored by the
transaction's time in milliseconds, one member per checked transaction (its reference is
in the member, so counting one reference twice only re-adds the same member).

A whole `CounterPlan` runs as one Lua script (one round trip, atomic): the writes first,
so each read includes this transaction, then the reads; sums are added up in the script,
so a window's members travel back only where the rule needs them (pattern statistics,
the previous location). Redis being slow or down must not hold up
payments: every round trip has a short deadline, and after a failure the counters are
skipped for a cool-down period, the check answering degraded instead of waiting on a
dead socket (see README, "When Redis is down").
"""

from __future__ import annotations

import asyncio
import json
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


# KEYS: every series the plan touches, once. ARGV[1]: the time in ms; ARGV[2]: the plan as
# JSON, {"w": [[key index, member, retention ms, cap, keep latest 0/1], ...], "r": [[key
# index, op, window ms, currency], ...]}. Returns, as one JSON array, one answer per read:
# a count; for "sum", the total of the members' amounts in the currency as two decimal
# strings [high, low] meaning high * 10^9 + low (Lua counts in doubles, exact only to
# 2^53: an amount is split at 10^9, so neither partial sum of at most VELOCITY_CAP amounts
# leaves that range, and Python joins them exactly); the members of the window ("stats");
# or (for "last") the newest two members with their scores.
#
# Why JSON both ways, and sums in the script: a check asks a few dozen questions, and
# redis-py encodes each argument and parses each reply line in Python, which made the
# client's side of this one round trip the largest CPU cost of a check. One argument in,
# one string out (decoded by the C json module), and no window's members sent back unless
# a rule needs them (pattern statistics, the previous location).
PLAN_SCRIPT = """
local at = tonumber(ARGV[1])
local plan = cjson.decode(ARGV[2])
for _, w in ipairs(plan.w) do
  local k = KEYS[w[1]]
  if w[5] == 1 then
    redis.call('ZADD', k, 'GT', ARGV[1], w[2])
  else
    redis.call('ZADD', k, ARGV[1], w[2])
  end
  redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('(%d', at - w[3]))
  redis.call('ZREMRANGEBYRANK', k, 0, -(w[4] + 1))
  redis.call('PEXPIRE', k, w[3] + 60000)
end
local out = {}
for _, r in ipairs(plan.r) do
  local k = KEYS[r[1]]
  local op = r[2]
  local low = string.format('(%d', at - r[3])
  if op == 'count' then
    out[#out + 1] = redis.call('ZCOUNT', k, low, ARGV[1])
  elseif op == 'last' then
    out[#out + 1] = redis.call('ZREVRANGEBYSCORE', k, ARGV[1], low, 'WITHSCORES', 'LIMIT', 0, 2)
  elseif op == 'sum' then
    local currency = r[4]
    local high, low9 = 0, 0
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', k, low, ARGV[1])) do
      local c, sign, digits = string.match(m, '|([^|]*)|(%-?)(%d+)$')
      if c == currency then
        local n = string.len(digits)
        local l = tonumber(string.sub(digits, math.max(1, n - 8)))
        local h = 0
        if n > 9 then h = tonumber(string.sub(digits, 1, n - 9)) end
        if sign == '-' then l, h = -l, -h end
        high, low9 = high + h, low9 + l
      end
    end
    out[#out + 1] = {string.format('%.0f', high), string.format('%.0f', low9)}
  else
    out[#out + 1] = redis.call('ZRANGEBYSCORE', k, low, ARGV[1])
  end
end
return cjson.encode(out)
"""


def key(series: Series) -> str:
    return f"{KEY_PREFIX}:{series.kind}:{series.subject}:{series.value}"


def _amount_of(member: str, currency: str) -> int | None:
    """The amount of a `reference|currency|amount` member, if it is in `currency`."""
    _, member_currency, amount = member.rsplit("|", 2)
    return int(amount) if member_currency == currency else None


def answer(read: Read, raw: Any) -> object:
    """Turns the script's answer to one read (decoded JSON) into the value the rules expect."""
    if read.op == "count":
        return int(raw)
    if read.op == "sum":
        high, low = raw  # summed by the script, see PLAN_SCRIPT
        return int(high) * 1_000_000_000 + int(low)
    raw = raw or []  # Lua's cjson encodes an empty table as {}
    if read.op == "stats":
        amounts = [a for m in raw if m != read.exclude and (a := _amount_of(m, read.currency)) is not None]
        if not amounts:
            return (0, 0.0, 0.0)
        mean = sum(amounts) / len(amounts)
        variance = sum((a - mean) ** 2 for a in amounts) / len(amounts)
        return (len(amounts), mean, math.sqrt(variance))
    # last: [member, score, member, score] as the script returns it
    for member, score in zip(raw[::2], raw[1::2], strict=True):
        if member != read.exclude:
            return (member, int(float(score)))
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
            # asyncio.timeout rather than wait_for: no task (and no extra turn of the event
            # loop, behind every other check's work) per round trip.
            async with asyncio.timeout(self.timeout):
                raw = await self._execute(plan)
        # ValueError: a reply that is not the script's JSON, judged like any other failure
        except (RedisError, OSError, TimeoutError, ValueError) as exc:
            self.failures += 1
            self._down_until = time.monotonic() + self.cooldown
            log.warning("velocity counters unreachable", extra={"error": repr(exc)})
            return None
        return {read: answer(read, value) for read, value in zip(plan.reads, raw, strict=True)}

    async def _execute(self, plan: CounterPlan) -> Sequence[Any]:
        slots: dict[Series, int] = {}  # series -> its 1-based index in KEYS

        def slot(series: Series) -> int:
            return slots.setdefault(series, len(slots) + 1)

        writes = [[slot(w.series), w.member, w.retention_ms, w.cap, int(w.keep_latest)] for w in plan.writes]
        reads = [[slot(r.series), r.op, r.window_ms, r.currency] for r in plan.reads]
        # Not ASCII-escaped: the script must see a member's bytes exactly as ZREM will send them.
        body = json.dumps({"w": writes, "r": reads}, ensure_ascii=False, separators=(",", ":"))
        keys = [key(series) for series in slots]
        reply = await self._script(keys=keys, args=[plan.at_ms, body])
        return json.loads(reply) or []  # type: ignore[no-any-return]  # {} when nothing was read

    async def forget(self, members: Sequence[tuple[Series, str]]) -> None:
        """Takes a declined transaction back out of the history series; best effort."""
        if not members or time.monotonic() < self._down_until:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for series, member in members:
                pipe.zrem(key(series), member)
            async with asyncio.timeout(self.timeout):
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not forget a declined transaction", extra={"error": repr(exc)})
