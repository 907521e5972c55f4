"""The fraud service's composition root: wires adapters into the use cases and servicer."""

from __future__ import annotations

from pathlib import Path

from services.framework import metrics
from services.framework.config import ServiceConfig, integer
from services.framework.db import Database
from services.framework.outbox import Relay
from services.framework.peers import Peers
from services.framework.periodic import Periodic
from services.framework.server import run
from services.fraud.adapters.counters import Counters
from services.fraud.adapters.users import RiskProfiles
from services.fraud.entrypoints.grpc_api import FraudServicer
from services.fraud.service_layer.admin import Admin
from services.fraud.service_layer.checks import FraudChecks
from services.fraud.service_layer.configuration import Configuration

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max, audited=True)
    counters = Counters(
        config.redis_url,
        timeout_seconds=integer("INTERPAY_FRAUD_REDIS_TIMEOUT_MS", 250) / 1000,
        cooldown_seconds=integer("INTERPAY_FRAUD_REDIS_COOLDOWN_MS", 2000) / 1000,
    )
    peers = Peers(config.peer_addresses, config.peer_deadline_seconds, config.tls)
    profiles = RiskProfiles(peers, deadline_seconds=integer("INTERPAY_FRAUD_USERS_DEADLINE_MS", 300) / 1000)
    configuration = Configuration(db)
    checks = FraudChecks(db, configuration, counters, profiles)
    admin = Admin(db, configuration)
    metrics.register_gauge(
        "interpay_fraud_config_version",
        "The configuration version (rules, blacklist, thresholds) this replica evaluates with",
        [],
        lambda: [([], float(configuration.current.version))],
    )
    metrics.register_gauge(
        "interpay_fraud_counter_failures",
        "Redis round trips of the velocity counters that failed since start",
        [],
        lambda: [([], float(counters.failures))],
    )
    poll = Periodic(
        "refresh-fraud-config",
        integer("INTERPAY_FRAUD_CONFIG_POLL_MS", 1000) / 1000,
        configuration.refresh,
    )
    forget_keys = Periodic("forget-idempotency-keys", 3600.0, admin.forget_idempotency_keys)
    # The database (migrations) before the configuration that reads it.
    # The audit trail of the fraud configuration, published to Kafka (framework/audit.py).
    relay = Relay(db, "fraud")
    return FraudServicer(checks, admin), [db, configuration, counters, peers, poll, forget_keys, relay]


def main() -> None:
    run("fraud", build)  # type: ignore[arg-type]
