"""The merchants service's composition root: wires adapters into the use cases and servicer."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from interpay.transfers.v1.transfers_service_pb2_grpc import TransfersServiceStub
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.framework.cache import Redis
from services.framework.config import ServiceConfig, integer
from services.framework.consumer import EventConsumer
from services.framework.db import Database
from services.framework.outbox import Relay
from services.framework.peers import Peers
from services.framework.periodic import Periodic
from services.framework.server import run
from services.framework.topology import PROFILES, SERVICES
from services.merchants.adapters.analytics import Analytics
from services.merchants.adapters.payouts import Payouts
from services.merchants.adapters.rate_limiter import RateLimiter
from services.merchants.adapters.repository import MerchantRepository
from services.merchants.adapters.secret_box import SecretBox
from services.merchants.adapters.settlement_wallets import SettlementWallets
from services.merchants.entrypoints.grpc_api import MerchantsServicer
from services.merchants.service_layer import payment_events
from services.merchants.service_layer.api_keys import ApiKeys
from services.merchants.service_layer.onboarding import Merchants, utc_now
from services.merchants.service_layer.settlements import Settlements
from services.merchants.service_layer.webhooks import WebhookEndpoints

MIGRATIONS = Path(__file__).parent / "migrations"
# How long a create call's Idempotency-Key is remembered.
IDEMPOTENCY_KEY_RETENTION = timedelta(hours=24)


def allow_open_day() -> bool:
    """Whether RunSettlement may settle the current UTC day: never in production (the
    contract refuses it), by default on a local mesh (INTERPAY_PROFILE dev, test, bench,
    work) so tests and demos can settle the payments they just made;
    INTERPAY_SETTLEMENT_ALLOW_OPEN_DAY=0/1 overrides."""
    explicit = os.environ.get("INTERPAY_SETTLEMENT_ALLOW_OPEN_DAY", "").strip()
    if explicit:
        return explicit == "1"
    return os.environ.get("INTERPAY_PROFILE", "").strip() in PROFILES


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    box = SecretBox.from_environment()  # before anything opens: a missing key stops start-up
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max, audited=True)
    redis = Redis(config.redis_url)
    peers = Peers(config.peer_addresses, config.peer_deadline_seconds, config.tls)
    merchants = Merchants(db, SettlementWallets(peers.stub("wallet", WalletServiceStub)))
    api_keys = ApiKeys(
        db,
        RateLimiter(redis.client),
        default_rate_limit_per_minute=integer("INTERPAY_API_KEY_DEFAULT_RATE_LIMIT_PER_MINUTE", 1000),
    )
    webhooks = WebhookEndpoints(db, box, publishers={spec.name for spec in SERVICES})
    settlements = Settlements(
        db, Payouts(peers.stub("transfers", TransfersServiceStub)), utc_now, allow_open_day=allow_open_day()
    )

    async def forget_idempotency_keys() -> None:
        async with db.transaction() as conn:
            await MerchantRepository(conn).purge_idempotency_keys(utc_now() - IDEMPOTENCY_KEY_RETENTION)

    jobs = [
        Periodic(
            "open-missing-settlement-wallets",
            float(integer("INTERPAY_WALLET_REPAIR_INTERVAL_SECONDS", 5)),
            merchants.open_missing_wallets,
        ),
        Periodic("forget-idempotency-keys", 3600.0, forget_idempotency_keys),
        # Daily settlements: every day up to yesterday (UTC) with lines not settled yet,
        # and the payouts whose outcome is not known yet.
        Periodic(
            "settle-due-days",
            float(integer("INTERPAY_SETTLEMENT_INTERVAL_SECONDS", 3600)),
            settlements.settle_due,
        ),
        Periodic(
            "resume-settlement-payouts",
            float(integer("INTERPAY_SETTLEMENT_RESUME_INTERVAL_SECONDS", 5)),
            settlements.resume_payouts,
        ),
    ]
    # Payment events -> settlement lines and analytics (service_layer/payment_events.py):
    # exactly once in PostgreSQL, then copied to Cassandra with idempotent writes.
    analytics = Analytics()
    consumer = EventConsumer(db, "merchants", payment_events.TOPICS, payment_events.handle)
    copier = Periodic(
        "copy-analytics-to-cassandra",
        integer("INTERPAY_ANALYTICS_COPY_INTERVAL_MS", 1000) / 1000,
        lambda: payment_events.copy_to_cassandra(db, analytics),
    )
    # The audit trail of the merchants' state, published to Kafka (framework/audit.py).
    relay = Relay(db, "merchants")
    return MerchantsServicer(merchants, api_keys, webhooks, settlements), [
        db,
        relay,
        redis,
        peers,
        analytics,
        consumer,
        copier,
        *jobs,
    ]


def main() -> None:
    run("merchants", build)  # type: ignore[arg-type]
