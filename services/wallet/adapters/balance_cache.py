"""Wallet balances cached in Redis (cache-aside, short TTL), never stale after a commit.

Each wallet is one hash `wallet:<id>:balance` with the cached snapshot (`d`), its version
(`v`) and the number of writers in flight (`w`). A writer announces itself (`w` + 1)
before it touches the database and, after its transaction ends, leaves (`w` - 1) and
stores its committed snapshot unless a newer one is there. Readers use the snapshot only
while no writer is in flight, and may fill the cache only when no writer is in flight and
nothing newer is cached. So a reader can never see, or put back, a balance older than the
last commit. A writer that dies in flight leaves `w` raised until the hash's TTL expires:
reads go to PostgreSQL meanwhile, which is slower, never wrong. If Redis is down, reads go
to PostgreSQL; a write during a Redis outage cannot announce itself, so a snapshot cached
before the outage can outlive it by at most its TTL.

Nothing here runs while wallet rows are locked: the announcement comes before the
transaction, the store after it, so Redis latency never lengthens a hot wallet's queue.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

import redis.asyncio as redis
from redis.exceptions import RedisError

from services.wallet.domain.model import OwnerType, Wallet, WalletState

log = logging.getLogger("interpay.wallet.cache")

TTL_SECONDS = 30

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


def _key(wallet_id: uuid.UUID) -> str:
    return f"wallet:{wallet_id}:balance"


def _encode(w: Wallet) -> str:
    return json.dumps(
        [
            str(w.wallet_id),
            w.owner_type.value,
            w.owner_id,
            w.currency,
            w.balance,
            w.available,
            w.pending,
            w.state.value,
            w.version,
            w.created_at.isoformat(),
            w.updated_at.isoformat(),
        ]
    )


def _decode(raw: bytes) -> Wallet:
    f = json.loads(raw)
    return Wallet(
        uuid.UUID(f[0]),
        OwnerType(f[1]),
        f[2],
        f[3],
        f[4],
        f[5],
        f[6],
        WalletState(f[7]),
        f[8],
        datetime.fromisoformat(f[9]),
        datetime.fromisoformat(f[10]),
    )


class BalanceCache:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._begin = client.register_script(_BEGIN)
        self._end = client.register_script(_END)
        self._fill = client.register_script(_FILL)
        self.hits = 0
        self.misses = 0

    async def get(self, wallet_id: uuid.UUID) -> Wallet | None:
        try:
            writers, snapshot = await self.client.hmget(_key(wallet_id), ["w", "d"])
        except RedisError as exc:
            log.warning("balance cache unavailable", extra={"error": str(exc)})
            writers, snapshot = None, None
        if snapshot is None or int(writers or 0) > 0:
            self.misses += 1
            return None
        self.hits += 1
        return _decode(snapshot if isinstance(snapshot, bytes) else snapshot.encode())

    async def fill(self, wallet: Wallet) -> None:
        await self._call(self._fill, [_key(wallet.wallet_id)], [TTL_SECONDS, wallet.version, _encode(wallet)])

    async def begin_write(self, wallet_ids: Sequence[uuid.UUID]) -> bool:
        return await self._call(self._begin, [_key(w) for w in wallet_ids], [TTL_SECONDS])

    async def end_write(self, wallet_ids: Sequence[uuid.UUID], committed: Iterable[Wallet]) -> None:
        snapshots = {w.wallet_id: w for w in committed}
        args: list[str | int] = [TTL_SECONDS]
        for wallet_id in wallet_ids:
            wallet = snapshots.get(wallet_id)
            args += [wallet.version, _encode(wallet)] if wallet else [0, ""]
        await self._call(self._end, [_key(w) for w in wallet_ids], args)

    async def _call(self, script, keys: list[str], args: list[str | int]) -> bool:  # type: ignore[no-untyped-def]
        try:
            await script(keys=keys, args=args)
            return True
        except RedisError as exc:
            log.warning("balance cache unavailable", extra={"error": str(exc)})
            return False
