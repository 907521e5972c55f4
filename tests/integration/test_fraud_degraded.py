"""When Redis is down a check still answers, degraded, rather than holding up payments.

The mesh's Redis cannot be stopped under the other tests, so these tests wire the fraud
service's own use cases in-process (as bootstrap.py does) against the mesh's real
PostgreSQL and a real Redis client pointed at a port where nothing listens."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from services.framework.db import Database
from services.framework.topology import Profile
from services.fraud.adapters.counters import Counters
from services.fraud.domain.evidence import plan_counters
from services.fraud.domain.model import (
    Decision,
    Money,
    PaymentMethodKind,
    RuleType,
    Transaction,
    TransactionKind,
)
from services.fraud.service_layer.checks import CheckRequest, FraudChecks
from services.fraud.service_layer.configuration import Configuration
from tests.conftest import database_url


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # released on close: nothing listens there


@pytest.fixture
async def db(profile: Profile, mesh_secrets: dict[str, str]) -> AsyncIterator[Database]:
    database = Database(database_url(profile, mesh_secrets, "fraud"), None, max_size=2)
    await database.start()
    yield database
    await database.close()


def transaction() -> Transaction:
    return Transaction(
        reference=f"test-degraded-{uuid.uuid4()}",
        kind=TransactionKind.PAYMENT,
        transaction_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        merchant_id=None,
        counterparty_user_id=None,
        amount=Money(1500, "EUR"),
        method=PaymentMethodKind.CARD,
        card_fingerprint=uuid.uuid4().hex * 2,
        device_fingerprint=f"device-{uuid.uuid4()}",
        ip_address="2001:db8::7",
        country_code="DE",
        latitude=None,
        longitude=None,
        email=None,
        kyc_level=2,
        occurred_at=datetime.now(UTC),
    )


async def test_a_check_answers_degraded_when_redis_is_down(db: Database) -> None:
    counters = Counters(f"redis://127.0.0.1:{closed_port()}/0", timeout_seconds=0.2, cooldown_seconds=30)
    config = Configuration(db)
    await config.start()
    checks = FraudChecks(db, config, counters, profiles=None)
    try:
        txn = transaction()
        check = await checks.check(CheckRequest(txn, None, b"hash-1"))
        assert check.degraded and check.decision is Decision.APPROVE
        velocity = [f for f in check.fired_rules if f.rule_type is RuleType.VELOCITY]
        assert velocity and all(f.degraded and f.contribution == 0 for f in velocity)
        assert all("unreachable (Redis)" in f.reason for f in velocity)
        assert counters.failures == 1
        # While the counters cool down, the next check does not even try the dead socket.
        second = await checks.check(CheckRequest(transaction(), None, b"hash-2"))
        assert second.degraded and counters.failures == 1
        # The degraded check is recorded like any other: a retry replays it.
        replay = await checks.check(CheckRequest(txn, None, b"hash-1"))
        assert replay.check_id == check.check_id and replay.degraded
    finally:
        await counters.close()


async def test_counters_report_unreachable_instead_of_raising() -> None:
    counters = Counters(f"redis://127.0.0.1:{closed_port()}/0", timeout_seconds=0.2)
    try:
        txn = transaction()
        plan = plan_counters([], txn, int(txn.occurred_at.timestamp() * 1000))
        assert plan.writes  # the user's history is always kept
        assert await counters.run(plan) is None
        assert counters.failures == 1
    finally:
        await counters.close()
