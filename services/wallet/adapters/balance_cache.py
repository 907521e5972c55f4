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

# KEYS[1] the wallet key; ARGV: version, payload ('' for a dirty marker), role ('reader' or
# 'writer'), ttl. Entries are "<version>|<payload>" or "<version>|dirty".
_STORE = """
local current = redis.call('GET', KEYS[1])
local version = tonumber(ARGV[1])
if current then
  local sep = string.find(current, '|', 1, true)
  local held = tonumber(string.sub(current, 1, sep - 1))
  local dirty = string.sub(current, sep + 1) == 'dirty'
  if ARGV[3] == 'reader' and (dirty or held >= version) then return 0 end
  if ARGV[3] == 'writer' and held > version then return 0 end
end
local payload = ARGV[2]
if payload == '' then payload = 'dirty' end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. payload, 'EX', ARGV[4])
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
        for w in wallets:
            await self._run(w.wallet_id, w.version, "", "writer", MARKER_TTL_SECONDS)

    async def store(self, wallets: Iterable[Wallet], *, role: str) -> None:
        for w in wallets:
            await self._run(w.wallet_id, w.version, _encode(w), role, DATA_TTL_SECONDS)

    async def _run(self, wallet_id: uuid.UUID, version: int, payload: str, role: str, ttl: int) -> None:
        try:
            await self._store(keys=[_key(wallet_id)], args=[version, payload, role, ttl])
        except RedisError as exc:
            log.warning("balance cache unavailable", extra={"error": str(exc)})
