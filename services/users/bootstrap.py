"""The users service's composition root: wires adapters into the use cases and servicer."""

from __future__ import annotations

from pathlib import Path

from services.framework import metrics
from services.framework.cache import Redis
from services.framework.config import ServiceConfig, integer, optional, require
from services.framework.db import Database
from services.framework.periodic import Periodic
from services.framework.server import run
from services.users.adapters.login_throttle import LoginThrottle
from services.users.adapters.profile_cache import ProfileCache
from services.users.adapters.tokens import TokenIssuer
from services.users.entrypoints.grpc_api import UserServicer
from services.users.service_layer.accounts import Accounts
from services.users.service_layer.identity import Identity
from services.users.service_layer.kyc import Kyc
from services.users.service_layer.unit_of_work import UnitOfWork

MIGRATIONS = Path(__file__).parent / "migrations"


class _OptionalRedis(Redis):
    """Redis that does not stop the service from starting when it is down: the cache and
    the login throttle both fail open, so users can still log in during an outage."""

    async def start(self) -> None:
        return None


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    retired = [p.strip() for p in optional("INTERPAY_JWT_RETIRED_KEY_FILES", "").split(",") if p.strip()]
    tokens = TokenIssuer.from_file(require("INTERPAY_JWT_PRIVATE_KEY_FILE"), retired)
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max)
    redis = _OptionalRedis(config.redis_url)
    cache = ProfileCache(redis.client)
    uow = UnitOfWork(db, cache)
    identity = Identity(uow, tokens, LoginThrottle(redis.client))
    accounts = Accounts(uow, cache)
    metrics.register_gauge(
        "interpay_cache_requests",
        "Profile cache lookups, by result",
        ["result"],
        lambda: [(["hit"], cache.hits), (["miss"], cache.misses)],
    )
    purge = Periodic(
        "purge-ended-sessions",
        float(integer("INTERPAY_SESSION_PURGE_INTERVAL_SECONDS", 3600)),
        identity.purge_ended_sessions,
    )
    servicer = UserServicer(identity, accounts, Kyc(uow, accounts), tokens)
    return servicer, [db, redis, purge]


def main() -> None:
    run("users", build)  # type: ignore[arg-type]
