"""Wallet balances cached in Redis (cache-aside, 30 s TTL), never stale after a commit:
the framework's versioned cache (services/framework/versioned_cache.py) keyed by wallet,
with the wallet's version. The ledger announces its writers before its transaction and
stores after it, so Redis latency never lengthens a hot wallet's lock queue."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import redis.asyncio as redis

from services.framework.versioned_cache import Codec, VersionedCache
from services.wallet.domain.model import OwnerType, Wallet, WalletState

TTL_SECONDS = 30


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


class BalanceCache(VersionedCache[uuid.UUID, Wallet]):
    def __init__(self, client: redis.Redis) -> None:
        codec = Codec(_key, lambda w: w.wallet_id, lambda w: w.version, _encode, _decode)
        super().__init__(client, codec, TTL_SECONDS, "balance")
