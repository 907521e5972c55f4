"""Failed-login throttling in Redis, per account and per source address.

One counter per subject: `users:login-failures:account:<sha256 of the lower-cased email>`
(the email itself never reaches Redis; unknown emails are counted like known ones, so the
throttle does not reveal which are registered) and `users:login-failures:source:<ip>`.
A counter lives for a bounded window from its first failure; when it reaches its limit
its TTL is reset to the lockout period, and while it is at the limit every login of that
account or from that source is refused, a correct password included. When the key
expires the subject starts afresh. A successful login clears the account's counter, not
the source's (an attacker must not reset it by logging into their own account).

Fails open: if Redis is unreachable, logins are not throttled (and the outage is logged),
because refusing every login would turn a cache outage into a platform outage.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger("interpay.users.throttle")

# ARGV: per key: limit. Returns per key: count, ttl in seconds.
_CHECK = """
local out = {}
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  out[2 * i - 1] = count
  out[2 * i] = redis.call('TTL', key)
end
return out
"""

# ARGV: window, then per key: limit, lockout. Returns per key: count, ttl.
_FAIL = """
local out = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  local limit = tonumber(ARGV[2 * i])
  if count == 1 then redis.call('EXPIRE', key, ARGV[1]) end
  if count == limit then redis.call('EXPIRE', key, ARGV[2 * i + 1]) end
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ARGV[1]) end
  out[2 * i - 1] = count
  out[2 * i] = redis.call('TTL', key)
end
return out
"""


@dataclass(frozen=True)
class ThrottlePolicy:
    window_seconds: int = 900
    account_limit: int = 5
    account_lockout_seconds: int = 900
    source_limit: int = 30
    source_lockout_seconds: int = 900


@dataclass(frozen=True)
class Lockout:
    scope: str  # 'account' or 'source'
    retry_after_seconds: int


def account_key(email: str) -> str:
    return "users:login-failures:account:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()


def source_key(source_ip: str) -> str:
    return f"users:login-failures:source:{source_ip}"


class LoginThrottle:
    def __init__(self, client: redis.Redis, policy: ThrottlePolicy | None = None) -> None:
        self.client = client
        self.policy = policy or ThrottlePolicy()
        self._check = client.register_script(_CHECK)
        self._fail = client.register_script(_FAIL)

    def _subjects(self, email: str, source_ip: str) -> list[tuple[str, str, int, int]]:
        p = self.policy
        subjects = [("account", account_key(email), p.account_limit, p.account_lockout_seconds)]
        if source_ip:
            subjects.append(("source", source_key(source_ip), p.source_limit, p.source_lockout_seconds))
        return subjects

    async def lockout(self, email: str, source_ip: str) -> Lockout | None:
        """The active lockout of this account or source, if any (the longest)."""
        subjects = self._subjects(email, source_ip)
        try:
            found = await self._check(keys=[s[1] for s in subjects], args=[s[2] for s in subjects])
        except RedisError as exc:
            log.warning("login throttle unavailable; not throttling", extra={"error": str(exc)})
            return None
        locked = [
            Lockout(scope, int(found[2 * i + 1]))
            for i, (scope, _, limit, _) in enumerate(subjects)
            if int(found[2 * i]) >= limit and int(found[2 * i + 1]) > 0
        ]
        return max(locked, key=lambda lock: lock.retry_after_seconds) if locked else None

    async def record_failure(self, email: str, source_ip: str) -> Lockout | None:
        """Counts a failed login; returns the lockout it started, if it reached a limit."""
        subjects = self._subjects(email, source_ip)
        args: list[int] = [self.policy.window_seconds]
        for _, _, limit, lockout in subjects:
            args += [limit, lockout]
        try:
            found = await self._fail(keys=[s[1] for s in subjects], args=args)
        except RedisError as exc:
            log.warning("login throttle unavailable; not throttling", extra={"error": str(exc)})
            return None
        locked = [
            Lockout(scope, int(found[2 * i + 1]))
            for i, (scope, _, limit, _) in enumerate(subjects)
            if int(found[2 * i]) >= limit
        ]
        return max(locked, key=lambda lock: lock.retry_after_seconds) if locked else None

    async def record_success(self, email: str) -> None:
        try:
            await self.client.delete(account_key(email))
        except RedisError as exc:
            log.warning("login throttle unavailable", extra={"error": str(exc)})
