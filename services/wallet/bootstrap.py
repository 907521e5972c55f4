"""The wallet service's composition root: wires adapters into the use cases and servicer."""

from __future__ import annotations

from pathlib import Path

from services.framework import metrics
from services.framework.cache import Redis
from services.framework.config import ServiceConfig, integer
from services.framework.db import Database
from services.framework.outbox import Relay
from services.framework.periodic import Periodic
from services.framework.server import run
from services.wallet.adapters.balance_cache import BalanceCache
from services.wallet.entrypoints.grpc_api import WalletServicer
from services.wallet.service_layer.ledger import Ledger

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max, audited=True)
    redis = Redis(config.redis_url)
    cache = BalanceCache(redis.client)
    # Concurrent transfers share transactions of up to this many orders (group commit,
    # service_layer/batching.py); 1 runs each transfer in its own transaction.
    ledger = Ledger(db, cache, batch_size=integer("INTERPAY_WALLET_TRANSFER_BATCH_MAX", 256))
    last: dict[str, float] = {"mismatched": 0, "unbalanced": 0}

    async def reconcile() -> None:
        found = await ledger.reconcile()
        last["mismatched"] = len(found.mismatched_wallet_ids)
        last["unbalanced"] = len(found.unbalanced_transaction_ids)

    metrics.register_gauge(
        "interpay_ledger_reconciliation_mismatches",
        "Wallets whose balance differs from their entries, and unbalanced "
        "ledger transactions, at the last reconciliation",
        ["kind"],
        lambda: [([kind], value) for kind, value in last.items()],
    )
    metrics.register_gauge(
        "interpay_cache_requests",
        "Balance cache lookups, by result",
        ["result"],
        lambda: [(["hit"], cache.hits), (["miss"], cache.misses)],
    )
    jobs = [
        Periodic(
            "expire-holds", float(integer("INTERPAY_HOLD_EXPIRY_INTERVAL_SECONDS", 5)), ledger.expire_holds
        ),
        Periodic("reconcile-ledger", float(integer("INTERPAY_RECONCILE_INTERVAL_SECONDS", 60)), reconcile),
    ]
    # Every ledger change writes its events to the outbox in its own transaction; the
    # relay publishes them to Kafka (one replica at a time holds its lease).
    relay = Relay(db, "wallet")
    return WalletServicer(ledger), [db, redis, relay, *jobs]


def main() -> None:
    run("wallet", build)  # type: ignore[arg-type]
