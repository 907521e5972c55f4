"""The transfers service's composition root."""

from __future__ import annotations

from pathlib import Path

from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.framework.config import ServiceConfig
from services.framework.db import Database
from services.framework.peers import Peers
from services.framework.server import run
from services.transfers.entrypoints.grpc_api import TransfersServicer
from services.transfers.service_layer.transfers import Transfers

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max)
    peers = Peers(config.peer_addresses, config.peer_deadline_seconds)
    transfers = Transfers(db, peers.stub("wallet", WalletServiceStub))
    return TransfersServicer(transfers), [db, peers]


def main() -> None:
    run("transfers", build)  # type: ignore[arg-type]
