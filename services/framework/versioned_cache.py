"""A Redis cache-aside for rows with a version, never stale after a commit.

Each cached row is one hash with the snapshot (`d`), its version (`v`) and the number of
writers in flight (`w`). A writer announces itself (`w` + 1) before it touches the
database and, after its transaction ends, leaves (`w` - 1) and stores its committed
snapshot unless a newer one is there. Readers use the snapshot only while no writer is in
flight, and may fill the cache only when no writer is in flight and nothing as new is
cached. So a reader can never see, or put back, a row older than the last commit. A writer
that dies in flight leaves `w` raised until the hash's TTL expires: reads go to PostgreSQL
meanwhile, which is slower, never wrong. If Redis is down, reads go to PostgreSQL; a write
during a Redis outage cannot announce itself, so a snapshot cached before the outage can
outlive it by at most its TTL.

A service supplies the key of a row and how to encode and decode it (`Codec`); nothing here
runs while the service holds database locks, when it announces before its transaction and
stores after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger("interpay.cache")

K = TypeVar("K")
R = TypeVar("R")

_BEGIN = """
for _, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, 'w', 1)
  redis.call('EXPIRE', key, ARGV[1])
end
return 1
"""

# ARGV: ttl, then per key: version and snapshot ('' when the writer committed nothing).
_END = """
for i, key in ipairs(KEYS) do
  local writers = redis.call('HINCRBY', key, 'w', -1)
  if writers < 0 then redis.call('HSET', key, 'w', 0) end
  local version = tonumber(ARGV[2 * i])
  local held = tonumber(redis.call('HGET', key, 'v') or '0')
  if ARGV[2 * i + 1] ~= '' and version > held then
    redis.call('HSET', key, 'v', version, 'd', ARGV[2 * i + 1])
  end
  redis.call('EXPIRE', key, ARGV[1])
end
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


@dataclass(frozen=True)
class Codec(Generic[K, R]):
    """How one kind of row is cached: its key, identity, version and serialised form."""

    key: Callable[[K], str]
    identity: Callable[[R], K]
    version: Callable[[R], int]
    encode: Callable[[R], str]
    decode: Callable[[bytes], R]


class VersionedCache(Generic[K, R]):
    def __init__(self, client: redis.Redis, codec: Codec[K, R], ttl_seconds: int, name: str) -> None:
        self.client = client
        self.codec = codec
        self.ttl = ttl_seconds
        self.name = name
        self._begin = client.register_script(_BEGIN)
        self._end = client.register_script(_END)
        self._fill = client.register_script(_FILL)
        self.hits = 0
        self.misses = 0

    async def get(self, key: K) -> R | None:
        try:
            writers, snapshot = await self.client.hmget(self.codec.key(key), ["w", "d"])
        except RedisError as exc:
            log.warning(f"{self.name} cache unavailable", extra={"error": str(exc)})
            writers, snapshot = None, None
        if snapshot is None or int(writers or 0) > 0:
            self.misses += 1
            return None
        self.hits += 1
        return self.codec.decode(snapshot if isinstance(snapshot, bytes) else snapshot.encode())

    async def fill(self, row: R) -> None:
        key = self.codec.key(self.codec.identity(row))
        await self._call(self._fill, [key], [self.ttl, self.codec.version(row), self.codec.encode(row)])

    async def begin_write(self, keys: Sequence[K]) -> bool:
        """Announces writers on these rows; False if Redis could not be told."""
        return await self._call(self._begin, [self.codec.key(k) for k in keys], [self.ttl])

    async def end_write(self, keys: Sequence[K], committed: Iterable[R]) -> None:
        """The writers leave; each committed row is stored unless a newer one is cached."""
        snapshots = {self.codec.identity(r): r for r in committed}
        args: list[Any] = [self.ttl]
        for key in keys:
            row = snapshots.get(key)
            args += [self.codec.version(row), self.codec.encode(row)] if row is not None else [0, ""]
        await self._call(self._end, [self.codec.key(k) for k in keys], args)

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> bool:
        try:
            await script(keys=keys, args=args)
            return True
        except RedisError as exc:
            log.warning(f"{self.name} cache unavailable", extra={"error": str(exc)})
            return False
