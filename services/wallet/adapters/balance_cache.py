"""Wallet balances cached in Redis (cache-aside, short TTL), never stale after a commit.

A writer marks each wallet it changes as dirty, with the version it is about to commit,
before committing; after the commit it stores the new snapshot. Readers never use a
dirty entry and never overwrite a dirty entry or a newer version, so a reader that read
the database just before a commit cannot put the old balance back. If a writer dies
between commit and store, the marker expires in seconds and readers go to the database
meanwhile. Redis being down only costs the cache: reads fall back to PostgreSQL, which
stays the source of truth.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime

import redis.asyncio as redis
from redis.exceptions import RedisError

from services.wallet.domain.model import OwnerType, Wallet, WalletState

log = logging.getLogger("interpay.wallet.cache")

DATA_TTL_SECONDS = 30
MARKER_TTL_SECONDS = 10

# KEYS: the wallets' keys; ARGV: role ('reader' or 'writer'), ttl, then per key its version
# and payload ('' for a dirty marker). Entries are "<version>|<payload>" or "<version>|dirty".
# One call per change, so a writer adds one Redis round trip, not one per wallet.
_STORE = """
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[1 + 2 * i])
  local payload = ARGV[2 + 2 * i]
  local current = redis.call('GET', key)
  local allowed = true
  if current then
    local sep = string.find(current, '|', 1, true)
    local held = tonumber(string.sub(current, 1, sep - 1))
    local dirty = string.sub(current, sep + 1) == 'dirty'
    if ARGV[1] == 'reader' and (dirty or held >= version) then allowed = false end
    if ARGV[1] == 'writer' and held > version then allowed = false end
  end
  if allowed then
    if payload == '' then payload = 'dirty' end
    redis.call('SET', key, version .. '|' .. payload, 'EX', ARGV[2])
  end
end
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


def _decode(raw: str) -> Wallet:
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
        self._store = client.register_script(_STORE)
        self.hits = 0
        self.misses = 0

    async def get(self, wallet_id: uuid.UUID) -> Wallet | None:
        try:
            raw = await self.client.get(_key(wallet_id))
        except RedisError as exc:
            log.warning("balance cache unavailable", extra={"error": str(exc)})
            raw = None
        if raw is None or raw.endswith(b"|dirty"):
            self.misses += 1
            return None
        self.hits += 1
        return _decode(raw.split(b"|", 1)[1].decode())

    async def mark_dirty(self, wallets: Iterable[Wallet]) -> None:
        """Inside the writing transaction, before COMMIT, with the versions it will commit."""
        await self._run([(w, "") for w in wallets], "writer", MARKER_TTL_SECONDS)

    async def store(self, wallets: Iterable[Wallet], *, role: str) -> None:
        await self._run([(w, _encode(w)) for w in wallets], role, DATA_TTL_SECONDS)

    async def _run(self, entries: list[tuple[Wallet, str]], role: str, ttl: int) -> None:
        args: list[str | int] = [role, ttl]
        for wallet, payload in entries:
            args += [wallet.version, payload]
        try:
            await self._store(keys=[_key(w.wallet_id) for w, _ in entries], args=args)
        except RedisError as exc:
            log.warning("balance cache unavailable", extra={"error": str(exc)})
