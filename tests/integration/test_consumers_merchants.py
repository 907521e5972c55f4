"""The merchants service's consumer of payment events (services/merchants/service_layer/
payment_events.py) against the mesh's real Kafka, PostgreSQL and Cassandra: a captured and
twice refunded payment becomes one CAPTURE and two REFUND settlement lines, its events are
in Cassandra's payment_logs once each and its amounts in merchant_metrics; an event
published twice makes one line and one log row."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from cassandra.cluster import Session

from services.framework.topology import Profile
from tests.conftest import database_url
from tests.e2e.test_payments_flow import CUR, create_merchant, pay, payer
from tests.integration.test_consumers_notifications import (
    PAYMENT_TOPIC,
    envelope,
    payment_message,
    poll,
    publish,
)

PREFIX = "interpay.payments.v1."


@pytest.fixture
def merchants_db(profile: Profile, mesh_secrets: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url(profile, mesh_secrets, "merchants"), autocommit=True) as conn:
        yield conn


def lines(db: psycopg.Connection[Any], payment_id: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT kind, amount_minor, fee_minor, currency FROM settlement_lines WHERE payment_id = %s "
        "ORDER BY occurred_at, kind",
        (payment_id,),
    ).fetchall()


def payment_logs(session: Session, merchant_id: str, payment_id: str) -> list[Any]:
    now = datetime.now(UTC)
    buckets = {(now - timedelta(hours=h)).strftime("%Y-%m-%d-%H") for h in (0, 1)}
    rows = []
    for bucket in buckets:
        rows += [
            r
            for r in session.execute(
                "SELECT payment_id, event_type, amount_minor, log_data FROM payment_logs "
                "WHERE merchant_id = %s AND bucket = %s",
                (uuid.UUID(merchant_id), bucket),
            )
            if str(r.payment_id) == payment_id
        ]
    return rows


def metric_total(session: Session, merchant_id: str, metric: str) -> int:
    today = datetime.now(UTC).date()
    days = {today, today - timedelta(days=1)}
    return sum(
        r.value
        for day in days
        for r in session.execute(
            "SELECT value FROM merchant_metrics WHERE merchant_id = %s AND day = %s AND metric = %s",
            (uuid.UUID(merchant_id), day, metric),
        )
    )


def refund(gateway: httpx.Client, payment_id: str, amount: int) -> None:
    reply = gateway.post(
        f"/v1/payments/{payment_id}/refunds",
        headers={"Idempotency-Key": str(uuid.uuid4())},
        json={"amount": {"amountMinor": str(amount), "currency": CUR}, "reason": "returned"},
    )
    assert reply.status_code == 200, reply.text


def test_captures_and_refunds_become_settlement_lines_and_cassandra_rows(  # type: ignore[no-untyped-def]
    gateway, merchants_db, cassandra
) -> None:
    shop = create_merchant(gateway)  # fee 2.90 %
    payment = pay(gateway, shop, payer(gateway, 10_000), 4_000)["payment"]
    refund(gateway, payment["paymentId"], 1_000)
    refund(gateway, payment["paymentId"], 500)

    found = poll(lambda: (ls := lines(merchants_db, payment["paymentId"]))[2:] and ls, 60, "three lines")
    assert found == [("CAPTURE", 4_000, 116, CUR), ("REFUND", 1_000, 0, CUR), ("REFUND", 500, 0, CUR)]

    expected = ["Created", "Pending", "Authorized", "Captured", "PartiallyRefunded", "PartiallyRefunded"]
    logs = poll(
        lambda: (rows := payment_logs(cassandra, shop["merchantId"], payment["paymentId"]))[5:] and rows,
        60,
        "the payment's logs in Cassandra",
    )
    assert sorted(r.event_type for r in logs) == sorted(f"{PREFIX}Payment{e}" for e in expected)
    poll(lambda: metric_total(cassandra, shop["merchantId"], f"refunded_minor:{CUR}") == 1_500, 60, "refunds")
    assert metric_total(cassandra, shop["merchantId"], f"captured_minor:{CUR}") == 4_000
    assert metric_total(cassandra, shop["merchantId"], "captured_count") == 1
    assert metric_total(cassandra, shop["merchantId"], "refund_count") == 2


def test_an_event_published_twice_makes_one_line_and_one_log(  # type: ignore[no-untyped-def]
    profile, gateway, merchants_db, cassandra
) -> None:
    shop = create_merchant(gateway)
    event = envelope(payment_message(str(uuid.uuid4()), merchant_id=shop["merchantId"], amount=777))
    wire = event.SerializeToString()
    publish(profile, [(event.aggregate_id, wire), (event.aggregate_id, wire)], PAYMENT_TOPIC)
    poll(
        lambda: merchants_db.execute(
            "SELECT 1 FROM processed_events WHERE consumer = 'merchants' AND event_id = %s", (event.event_id,)
        ).fetchone(),
        60,
        "the event processed",
    )
    # The second copy is behind the first in the same partition: once a later event of the
    # same key is processed, both copies have been read.
    marker = envelope(payment_message(str(uuid.uuid4()), merchant_id=shop["merchantId"], amount=1))
    marker.aggregate_id = event.aggregate_id
    publish(profile, [(event.aggregate_id, marker.SerializeToString())], PAYMENT_TOPIC)
    poll(
        lambda: merchants_db.execute(
            "SELECT 1 FROM processed_events WHERE consumer = 'merchants' AND event_id = %s",
            (marker.event_id,),
        ).fetchone(),
        60,
        "a later event of the same key processed",
    )
    payment_id = event.aggregate_id
    assert lines(merchants_db, payment_id) == [("CAPTURE", 777, 0, "EUR")]
    logs = poll(lambda: payment_logs(cassandra, shop["merchantId"], payment_id), 60, "the log row")
    assert len([r for r in logs if r.amount_minor == 777]) == 1
