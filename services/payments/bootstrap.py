"""The payments service's composition root."""

from __future__ import annotations

from pathlib import Path

from interpay.orchestrator.v1.orchestrator_service_pb2_grpc import OrchestratorServiceStub
from interpay.vault.v1.vault_service_pb2_grpc import VaultServiceStub

from services.framework.config import ServiceConfig, integer
from services.framework.db import Database
from services.framework.outbox import Relay
from services.framework.peers import Peers
from services.framework.periodic import Periodic
from services.framework.server import run
from services.payments.entrypoints.grpc_api import PaymentServicer
from services.payments.service_layer.payments import Payments

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max, audited=True)
    peers = Peers(config.peer_addresses, config.peer_deadline_seconds, config.tls)
    payments = Payments(
        db, peers.stub("orchestrator", OrchestratorServiceStub), peers.stub("vault", VaultServiceStub)
    )
    review_timeout = float(integer("INTERPAY_REVIEW_TIMEOUT_SECONDS", 72 * 3600))
    expiry = Periodic(
        "expire-payments",
        float(integer("INTERPAY_PAYMENT_EXPIRY_INTERVAL_SECONDS", 30)),
        lambda: payments.expire(review_timeout),
    )
    # Every payment transition and refund outcome writes its event to the outbox in its
    # own transaction; the relay publishes them to Kafka (services/payments/adapters/events.py).
    relay = Relay(db, "payments")
    return PaymentServicer(payments), [db, peers, expiry, relay]


def main() -> None:
    run("payments", build)  # type: ignore[arg-type]
