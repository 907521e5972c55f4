"""The `interpay_logs` keyspace on the mesh's real Cassandra: the schema `mesh.py up`
applies is there, time-bucketed partitions read newest first, and rows written with a
TTL expire."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cassandra.cluster import Session

KEYSPACE = "interpay_logs"


@pytest.fixture
def session(cassandra: Session) -> Session:
    return cassandra


def gone(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still there after {timeout}s")
        time.sleep(0.2)


def test_the_logs_keyspace_and_its_tables_exist(session: Session) -> None:
    keyspace = session.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (KEYSPACE,)
    ).one()
    assert keyspace is not None and keyspace.replication["class"].endswith("SimpleStrategy")
    tables = {
        row.table_name: row.default_time_to_live
        for row in session.execute(
            "SELECT table_name, default_time_to_live FROM system_schema.tables WHERE keyspace_name = %s",
            (KEYSPACE,),
        )
    }
    assert set(tables) >= {
        "audit_events",
        "audit_events_by_entity",
        "api_request_logs",
        "payment_logs",
        "user_sessions",
        "merchant_daily_counters",
        "merchant_metrics",
    }
    assert tables["api_request_logs"] > 0 and tables["user_sessions"] > 0
    assert tables["audit_events"] == 0  # audit is kept


def test_payment_logs_are_bucketed_by_merchant_and_hour_newest_first(session: Session) -> None:
    merchant = uuid.uuid4()
    now = datetime.now(UTC).replace(microsecond=0)
    bucket = now.strftime("%Y-%m-%d-%H")
    insert = session.prepare(
        "INSERT INTO payment_logs (merchant_id, bucket, log_timestamp, log_id, payment_id, event_type, "
        "state, amount_minor, currency, log_data) VALUES (?, ?, ?, now(), ?, ?, ?, ?, ?, ?)"
    )
    for minutes, amount in ((2, 100), (0, 300), (1, 200)):
        session.execute(
            insert,
            (
                merchant,
                bucket,
                now - timedelta(minutes=minutes),
                uuid.uuid4(),
                "interpay.payments.v1.PaymentCaptured",
                "CAPTURED",
                amount,
                "EUR",
                "{}",
            ),
        )
    select = session.prepare("SELECT amount_minor FROM payment_logs WHERE merchant_id = ? AND bucket = ?")
    assert [r.amount_minor for r in session.execute(select, (merchant, bucket))] == [300, 200, 100]


def test_rows_written_with_a_ttl_expire(session: Session) -> None:
    """A row written USING TTL 1 disappears while its neighbour, written with a long TTL
    into the same partition, stays (so the first did exist and the read does work)."""
    user, short, long = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    write_session = session.prepare(
        "INSERT INTO user_sessions (user_id, session_id, created_at, user_agent) "
        "VALUES (?, ?, toTimestamp(now()), ?) USING TTL ?"
    )
    session.execute(write_session, (user, long, "pytest", 600))
    session.execute(write_session, (user, short, "pytest", 1))
    read_sessions = session.prepare(
        "SELECT session_id, TTL(user_agent) AS ttl FROM user_sessions WHERE user_id = ?"
    )
    gone(
        lambda: short in {r.session_id for r in session.execute(read_sessions, (user,))},
        30,
        "a session written with TTL 1",
    )
    [remaining] = list(session.execute(read_sessions, (user,)))
    assert remaining.session_id == long and 0 < remaining.ttl <= 600

    service, bucket = f"pytest-{uuid.uuid4()}", datetime.now(UTC).strftime("%Y-%m-%d-%H")
    write_request = session.prepare(
        "INSERT INTO api_request_logs (service, bucket, request_time, request_id, method, status_code) "
        "VALUES (?, ?, toTimestamp(now()), ?, ?, ?) USING TTL ?"
    )
    kept, expiring = uuid.uuid4(), uuid.uuid4()
    session.execute(write_request, (service, bucket, kept, "/test/Keep", "OK", 600))
    session.execute(write_request, (service, bucket, expiring, "/test/Expire", "OK", 1))
    read_requests = session.prepare(
        "SELECT request_id FROM api_request_logs WHERE service = ? AND bucket = ?"
    )
    gone(
        lambda: expiring in {r.request_id for r in session.execute(read_requests, (service, bucket))},
        30,
        "a request log written with TTL 1",
    )
    assert [r.request_id for r in session.execute(read_requests, (service, bucket))] == [kept]


def test_merchant_counters_add_up(session: Session) -> None:
    merchant = uuid.uuid4()
    day = datetime.now(UTC).date()
    bump = session.prepare(
        "UPDATE merchant_daily_counters SET value = value + ? "
        "WHERE merchant_id = ? AND day = ? AND metric = ? AND currency = ?"
    )
    for amount in (1250, 750):
        session.execute(bump, (amount, merchant, day, "captured_minor", "EUR"))
    row = session.execute(
        session.prepare("SELECT value FROM merchant_daily_counters WHERE merchant_id = ? AND day = ?"),
        (merchant, day),
    ).one()
    assert row is not None and row.value == 2000
