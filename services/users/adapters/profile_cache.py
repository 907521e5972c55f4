"""Users with their profiles cached in Redis (cache-aside, short TTL), never stale after a
commit. The same protocol as the wallet's balance cache (services/wallet/adapters/
balance_cache.py), for one key per user.

Each user is one hash `users:user:<id>` with the cached snapshot (`d`), its version (`v`,
the `users.version` bumped by every change of the user or profile) and the number of
writers in flight (`w`). A writer announces itself (`w` + 1) before its transaction and,
after the transaction ends, leaves (`w` - 1) and stores its committed snapshot unless a
newer one is there. Readers use the snapshot only while no writer is in flight, and fill
the cache only when no writer is in flight and nothing as new is cached. So no reader can
see, or put back, a user older than the last commit, and an erased user's personal data
is replaced by the erased snapshot at commit.

A writer that dies in flight leaves `w` raised until the TTL: reads go to PostgreSQL
meanwhile. If Redis is down, reads go to PostgreSQL; a write during an outage cannot
announce itself, so a snapshot cached before the outage can outlive it by at most the TTL.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime

import redis.asyncio as redis
from redis.exceptions import RedisError

from services.users.domain.model import User

log = logging.getLogger("interpay.users.cache")

TTL_SECONDS = 60

_BEGIN = """
redis.call('HINCRBY', KEYS[1], 'w', 1)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# ARGV: ttl, version, snapshot ('' when the writer committed nothing).
_END = """
local writers = redis.call('HINCRBY', KEYS[1], 'w', -1)
if writers < 0 then redis.call('HSET', KEYS[1], 'w', 0) end
local held = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if ARGV[3] ~= '' and tonumber(ARGV[2]) > held then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# ARGV: ttl, version, snapshot.
_FILL = """
local writers = tonumber(redis.call('HGET', KEYS[1], 'w') or '0')
local held = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if writers > 0 or held >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3], 'w', 0)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


def cache_key(user_id: uuid.UUID) -> str:
    return f"users:user:{user_id}"


def encode(u: User) -> str:
    return json.dumps(
        [
            str(u.user_id),
            u.email,
            u.phone,
            u.state,
            u.kyc_level,
            u.display_name,
            u.country_code,
            u.preferred_language,
            u.profile_version,
            u.created_at.isoformat(),
            u.updated_at.isoformat(),
            u.version,
        ]
    )


def decode(raw: bytes) -> User:
    f = json.loads(raw)
    return User(
        uuid.UUID(f[0]),
        f[1],
        f[2],
        f[3],
        f[4],
        f[5],
        f[6],
        f[7],
        f[8],
        datetime.fromisoformat(f[9]),
        datetime.fromisoformat(f[10]),
        f[11],
    )


class ProfileCache:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._begin = client.register_script(_BEGIN)
        self._end = client.register_script(_END)
        self._fill = client.register_script(_FILL)
        self.hits = 0
        self.misses = 0

    async def get(self, user_id: uuid.UUID) -> User | None:
        try:
            writers, snapshot = await self.client.hmget(cache_key(user_id), ["w", "d"])
        except RedisError as exc:
            log.warning("profile cache unavailable", extra={"error": str(exc)})
            writers, snapshot = None, None
        if snapshot is None or int(writers or 0) > 0:
            self.misses += 1
            return None
        self.hits += 1
        return decode(snapshot if isinstance(snapshot, bytes) else snapshot.encode())

    async def fill(self, user: User) -> None:
        await self._call(self._fill, user.user_id, [TTL_SECONDS, user.version, encode(user)])

    async def begin_write(self, user_id: uuid.UUID) -> bool:
        return await self._call(self._begin, user_id, [TTL_SECONDS])

    async def end_write(self, user_id: uuid.UUID, committed: User | None) -> None:
        args: list[str | int] = (
            [TTL_SECONDS, committed.version, encode(committed)]
            if committed
            else [
                TTL_SECONDS,
                0,
                "",
            ]
        )
        await self._call(self._end, user_id, args)

    async def _call(self, script, user_id: uuid.UUID, args: list[str | int]) -> bool:  # type: ignore[no-untyped-def]
        try:
            await script(keys=[cache_key(user_id)], args=args)
            return True
        except RedisError as exc:
            log.warning("profile cache unavailable", extra={"error": str(exc)})
            return False
