"""The transfers service's composition root."""

from __future__ import annotations

from pathlib import Path

from interpay.orchestrator.v1.orchestrator_service_pb2_grpc import OrchestratorServiceStub
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.framework.config import ServiceConfig, integer
from services.framework.db import Database
from services.framework.outbox import Relay
from services.framework.peers import Peers
from services.framework.periodic import Periodic
from services.framework.server import run
from services.transfers.entrypoints.grpc_api import TransfersServicer
from services.transfers.service_layer.transfers import Transfers

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max, audited=True)
    peers = Peers(config.peer_addresses, config.peer_deadline_seconds, config.tls)
    transfers = Transfers(
        db,
        peers.stub("orchestrator", OrchestratorServiceStub),
        peers.stub("wallet", WalletServiceStub),
        saga_deadline_seconds=float(integer("INTERPAY_SAGA_DEADLINE_SECONDS", 30)),
    )
    stale_after = float(integer("INTERPAY_TRANSFER_RESUME_AFTER_SECONDS", 60))
    resume = Periodic(
        "resume-pending-sagas",
        float(integer("INTERPAY_TRANSFER_RESUME_INTERVAL_SECONDS", 30)),
        lambda: transfers.resume_pending(stale_after),
    )
    # Every creation and change of state writes its event to the outbox in its own
    # transaction (adapters/events.py); the relay publishes them to Kafka (one replica at
    # a time holds its lease).
    relay = Relay(db, "transfers")
    return TransfersServicer(transfers), [db, peers, relay, resume]


def main() -> None:
    run("transfers", build)  # type: ignore[arg-type]
