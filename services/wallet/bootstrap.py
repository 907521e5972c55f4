"""The wallet service's composition root: wires adapters into the use cases and servicer."""

from __future__ import annotations

from pathlib import Path

from services.framework.config import ServiceConfig
from services.framework.db import Database
from services.framework.server import run
from services.wallet.entrypoints.grpc_api import WalletServicer
from services.wallet.service_layer.ledger import Ledger

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max)
    return WalletServicer(Ledger(db)), [db]


def main() -> None:
    run("wallet", build)  # type: ignore[arg-type]
