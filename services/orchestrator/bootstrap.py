"""The orchestrator's composition root: the saga engine, its peers, and the recovery job
that lets any replica finish the sagas another one left in flight."""

from __future__ import annotations

from pathlib import Path

from interpay.fraud.v1.fraud_service_pb2_grpc import FraudServiceStub
from interpay.merchants.v1.merchants_service_pb2_grpc import MerchantsServiceStub
from interpay.payments.v1.payments_service_pb2_grpc import PaymentServiceStub
from interpay.transfers.v1.transfers_service_pb2_grpc import TransfersServiceStub
from interpay.vault.v1.vault_service_pb2_grpc import VaultServiceStub
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.framework.config import ServiceConfig, integer
from services.framework.db import Database
from services.framework.outbox import Relay
from services.framework.peers import Peers
from services.framework.periodic import Periodic
from services.framework.server import run
from services.orchestrator.adapters.card_processor import SimulatedProcessor
from services.orchestrator.adapters.payout_rail import SimulatedPayoutRail
from services.orchestrator.entrypoints.grpc_api import OrchestratorServicer
from services.orchestrator.service_layer.engine import SagaEngine
from services.orchestrator.service_layer.payment_sagas import PaymentSagas
from services.orchestrator.service_layer.transfer_sagas import TransferSagas

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max, audited=True)
    peers = Peers(config.peer_addresses, config.peer_deadline_seconds, config.tls)
    sagas = PaymentSagas(
        payments=peers.stub("payments", PaymentServiceStub),
        wallet=peers.stub("wallet", WalletServiceStub),
        fraud=peers.stub("fraud", FraudServiceStub),
        merchants=peers.stub("merchants", MerchantsServiceStub),
        vault=peers.stub("vault", VaultServiceStub),
        processor=SimulatedProcessor(
            timeout_seconds=float(integer("INTERPAY_PROCESSOR_TIMEOUT_MILLISECONDS", 2000)) / 1000
        ),
    )
    transfer_sagas = TransferSagas(
        transfers=peers.stub("transfers", TransfersServiceStub),
        wallet=peers.stub("wallet", WalletServiceStub),
        fraud=peers.stub("fraud", FraudServiceStub),
        rail=SimulatedPayoutRail(
            timeout_seconds=float(integer("INTERPAY_PAYOUT_RAIL_TIMEOUT_MILLISECONDS", 2000)) / 1000,
            settle_after_seconds=float(integer("INTERPAY_PAYOUT_RAIL_SETTLE_MILLISECONDS", 3000)) / 1000,
        ),
    )
    engine = SagaEngine(
        db,
        {**sagas.definitions(), **transfer_sagas.definitions()},
        lease_seconds=float(integer("INTERPAY_SAGA_LEASE_SECONDS", 15)),
    )
    recovery = Periodic(
        "recover-sagas", float(integer("INTERPAY_SAGA_RECOVERY_INTERVAL_SECONDS", 2)), engine.recover
    )
    # The audit trail of sagas and steps, published to Kafka by the relay (framework/audit.py).
    relay = Relay(db, "orchestrator")
    return OrchestratorServicer(engine), [db, peers, recovery, relay]


def main() -> None:
    run("orchestrator", build)  # type: ignore[arg-type]
