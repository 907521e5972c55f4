"""The users service's composition root."""

from __future__ import annotations

from pathlib import Path

from services.framework.config import ServiceConfig, require
from services.framework.db import Database
from services.framework.server import run
from services.users.adapters.tokens import TokenIssuer
from services.users.entrypoints.grpc_api import UserServicer
from services.users.service_layer.identity import Identity

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    tokens = TokenIssuer.from_file(require("INTERPAY_JWT_PRIVATE_KEY_FILE"))
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max)
    return UserServicer(Identity(db, tokens), tokens), [db]


def main() -> None:
    run("users", build)  # type: ignore[arg-type]
