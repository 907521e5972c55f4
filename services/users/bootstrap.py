"""The users service's composition root: wires adapters into the use cases and servicer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from services.framework import metrics
from services.framework.cache import Redis
from services.framework.cassandra import Cassandra
from services.framework.config import ConfigError, ServiceConfig, integer, optional, require
from services.framework.db import Database
from services.framework.outbox import Relay
from services.framework.server import run
from services.users.adapters import sessions as session_store
from services.users.adapters.login_throttle import LoginThrottle
from services.users.adapters.profile_cache import ProfileCache
from services.users.adapters.tokens import TokenIssuer
from services.users.entrypoints.grpc_api import UserServicer
from services.users.service_layer.accounts import Accounts
from services.users.service_layer.identity import Identity, SessionLifetime
from services.users.service_layer.kyc import Kyc
from services.users.service_layer.unit_of_work import UnitOfWork

MIGRATIONS = Path(__file__).parent / "migrations"


class _OptionalRedis(Redis):
    """Redis that does not stop the service from starting when it is down: the cache and
    the login throttle both fail open, so users can still log in during an outage."""

    async def start(self) -> None:
        return None


def session_lifetime() -> SessionLifetime:
    """INTERPAY_SESSION_IDLE_SECONDS (default 30 days) and INTERPAY_SESSION_MAX_AGE_SECONDS
    (90 days); short ones let a test watch sessions expire."""
    default = SessionLifetime()
    idle = integer("INTERPAY_SESSION_IDLE_SECONDS", int(default.idle.total_seconds()))
    max_age = integer("INTERPAY_SESSION_MAX_AGE_SECONDS", int(default.max_age.total_seconds()))
    if idle <= 0 or max_age < idle:
        raise ConfigError("session lifetimes must be positive, the maximum age at least the idle lifetime")
    return SessionLifetime(timedelta(seconds=idle), timedelta(seconds=max_age))


def compose(
    db: Database,
    redis: Redis,
    cassandra: Cassandra,
    tokens: TokenIssuer,
    lifetime: SessionLifetime,
) -> tuple[UserServicer, ProfileCache]:
    """The use cases and servicer over the given resources (also how tests run the
    service in-process against a Cassandra that is down, or with short sessions)."""
    cache = ProfileCache(redis.client)
    sessions = session_store.SessionStore(cassandra)
    uow = UnitOfWork(db, cache)
    identity = Identity(uow, tokens, sessions, LoginThrottle(redis.client), lifetime=lifetime)
    accounts = Accounts(uow, sessions, cache)
    return UserServicer(identity, accounts, Kyc(uow, accounts), tokens), cache


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    retired = [p.strip() for p in optional("INTERPAY_JWT_RETIRED_KEY_FILES", "").split(",") if p.strip()]
    tokens = TokenIssuer.from_file(require("INTERPAY_JWT_PRIVATE_KEY_FILE"), retired)
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max, audited=True)
    redis = _OptionalRedis(config.redis_url)
    # Refresh sessions (Cassandra): connected lazily, so the service starts without it;
    # while it is down, whatever needs sessions answers UNAVAILABLE.
    cassandra = Cassandra(session_store.STATEMENTS)
    servicer, cache = compose(db, redis, cassandra, tokens, session_lifetime())
    metrics.register_gauge(
        "interpay_cache_requests",
        "Profile cache lookups, by result",
        ["result"],
        lambda: [(["hit"], cache.hits), (["miss"], cache.misses)],
    )
    # The audit trail (no personal data in it), published to Kafka (framework/audit.py).
    relay = Relay(db, "users")
    return servicer, [db, redis, cassandra, relay]


def main() -> None:
    run("users", build)  # type: ignore[arg-type]
