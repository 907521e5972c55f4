"""The merchants service's composition root: wires adapters into the use cases and servicer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.framework.cache import Redis
from services.framework.config import ServiceConfig, integer
from services.framework.consumer import EventConsumer
from services.framework.db import Database
from services.framework.peers import Peers
from services.framework.periodic import Periodic
from services.framework.server import run
from services.framework.topology import SERVICES
from services.merchants.adapters.analytics import Analytics
from services.merchants.adapters.rate_limiter import RateLimiter
from services.merchants.adapters.repository import MerchantRepository
from services.merchants.adapters.secret_box import SecretBox
from services.merchants.adapters.settlement_wallets import SettlementWallets
from services.merchants.entrypoints.grpc_api import MerchantsServicer
from services.merchants.service_layer import payment_events
from services.merchants.service_layer.api_keys import ApiKeys
from services.merchants.service_layer.onboarding import Merchants, utc_now
from services.merchants.service_layer.webhooks import WebhookEndpoints

MIGRATIONS = Path(__file__).parent / "migrations"
# How long a create call's Idempotency-Key is remembered.
IDEMPOTENCY_KEY_RETENTION = timedelta(hours=24)


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    box = SecretBox.from_environment()  # before anything opens: a missing key stops start-up
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max)
    redis = Redis(config.redis_url)
    peers = Peers(config.peer_addresses, config.peer_deadline_seconds, config.tls)
    merchants = Merchants(db, SettlementWallets(peers.stub("wallet", WalletServiceStub)))
    api_keys = ApiKeys(
        db,
        RateLimiter(redis.client),
        default_rate_limit_per_minute=integer("INTERPAY_API_KEY_DEFAULT_RATE_LIMIT_PER_MINUTE", 1000),
    )
    webhooks = WebhookEndpoints(db, box, publishers={spec.name for spec in SERVICES})

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
    return MerchantsServicer(merchants, api_keys, webhooks), [
        db,
        redis,
        peers,
        analytics,
        consumer,
        copier,
        *jobs,
    ]


def main() -> None:
    run("merchants", build)  # type: ignore[arg-type]
