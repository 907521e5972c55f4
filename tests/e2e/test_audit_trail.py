"""The framework's audit trail (services/framework/audit.py, audit.sql) and API request log
(services/framework/request_log.py), through the real mesh: every change of a row of
state records who, what, before, after, when and from where, in the same transaction;
the trail cannot be rewritten; quiet bookkeeping and rolled-back changes leave nothing;
secrets never enter it; and its analytics copy reaches Cassandra through Kafka, as does
one log row per public request."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from cassandra.cluster import Session
from psycopg.rows import dict_row

from services.framework.topology import Profile
from tests.conftest import database_url
from tests.e2e.test_card_payments import fresh_card, tokenize
from tests.e2e.test_edge_auth import api_key
from tests.e2e.test_payments_flow import create_merchant, pay, payer
from tests.helpers import poll


@pytest.fixture(scope="module")
def db(profile: Profile, mesh_secrets: dict[str, str]) -> Iterator[Callable[[str], psycopg.Connection[Any]]]:
    """A connection to a service's database as the service's own role (autocommit)."""
    opened: dict[str, psycopg.Connection[Any]] = {}

    def get(service: str) -> psycopg.Connection[Any]:
        if service not in opened:
            opened[service] = psycopg.connect(
                database_url(profile, mesh_secrets, service), autocommit=True, row_factory=dict_row
            )
        return opened[service]

    yield get
    for conn in opened.values():
        conn.close()


def trail(conn: psycopg.Connection[Any], table: str, entity_id: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT * FROM audit_trail WHERE table_name = %s AND entity_id = %s ORDER BY audit_id",
        (table, entity_id),
    ).fetchall()


def test_a_payment_records_who_changed_it_from_where_and_what_it_was(
    profile: Profile, gateway: httpx.Client, db: Callable[[str], psycopg.Connection[Any]]
) -> None:
    shop = create_merchant(gateway)
    _, key = api_key(gateway, shop["merchantId"], ["API_KEY_SCOPE_PAYMENTS_WRITE"])
    wallet = payer(gateway, 10_000)
    address = "127.77.0.9"
    with httpx.Client(
        base_url=f"http://127.0.0.1:{profile.gateway_port}",
        transport=httpx.HTTPTransport(local_address=address),
        headers={"x-api-key": key, "user-agent": "shop-backend/2.1", "x-forwarded-for": "203.0.113.66"},
        timeout=30,
    ) as as_shop:
        payment = pay(as_shop, shop, wallet, 2_500)["payment"]
    assert payment["state"] == "STATE_CAPTURED"

    rows = trail(db("payments"), "payments", payment["paymentId"])
    created, *changes = rows
    # The merchant created it, through the gateway, from its own address (not the one it claimed).
    assert created["operation"] == "INSERT" and created["before"] is None
    assert created["actor"] == f"merchant:{shop['merchantId']}" and created["via"] == "gateway"
    assert str(created["source_ip"]) == address
    assert created["user_agent"] == "shop-backend/2.1" and created["trace_id"]
    assert created["after"]["state"] == "INITIATED" and created["after"]["amount"] == 2_500
    # Opaque blobs and digests are never copied.
    for row in rows:
        assert not {"client_context", "fraud_assessment", "card_summary", "request_hash"} & set(
            row["after"] or {}
        )
    # Each later change: its before is the previous after, and the orchestrator made the
    # saga's moves.
    states = [(r["before"]["state"], r["after"]["state"]) for r in changes]
    assert states[0] == ("INITIATED", "PENDING") and states[-1][1] == "CAPTURED"
    assert all(prev["after"]["state"] == r["before"]["state"] for prev, r in zip(rows, changes, strict=False))
    assert {r["actor"] for r in changes if r["after"]["state"] in ("AUTHORIZED", "CAPTURED")} == {
        "service:orchestrator"
    }
    # The saga that ran it is in the orchestrator's trail, attributed to the payments service.
    sagas = (
        db("orchestrator")
        .execute(
            "SELECT actor, after->>'state' AS state FROM audit_trail WHERE table_name = 'sagas' "
            "AND after->>'reference_id' = %s ORDER BY audit_id",
            (payment["paymentId"],),
        )
        .fetchall()
    )
    assert sagas and sagas[0]["actor"] == "service:payments" and sagas[-1]["state"] == "COMPLETED"


def test_the_trail_cannot_be_rewritten(db: Callable[[str], psycopg.Connection[Any]]) -> None:
    conn = db("payments")
    row = conn.execute("SELECT audit_id FROM audit_trail ORDER BY audit_id LIMIT 1").fetchone()
    assert row is not None
    for statement in (
        "UPDATE audit_trail SET actor = 'someone else' WHERE audit_id = %s",
        "UPDATE audit_trail SET published_at = NULL WHERE audit_id = %s",
        "DELETE FROM audit_trail WHERE audit_id = %s",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement, (row["audit_id"],))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("TRUNCATE audit_trail")


def test_quiet_and_rolled_back_changes_leave_nothing_and_jobs_are_the_system(
    gateway: httpx.Client, db: Callable[[str], psycopg.Connection[Any]]
) -> None:
    shop = create_merchant(gateway)
    payment = pay(gateway, shop, payer(gateway, 5_000), 1_000)["payment"]
    conn = db("payments")
    before = len(trail(conn, "payments", payment["paymentId"]))
    # Only a quiet column changes: nothing to record.
    conn.execute("UPDATE payments SET updated_at = now() WHERE payment_id = %s", (payment["paymentId"],))
    # A change that rolls back takes its record with it.
    with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
        conn.execute(
            "UPDATE payments SET description = 'changed' WHERE payment_id = %s", (payment["paymentId"],)
        )
        conn.execute("UPDATE payments SET amount = -1 WHERE payment_id = %s", (payment["paymentId"],))
    assert len(trail(conn, "payments", payment["paymentId"])) == before
    # A change outside any call (a job, a migration) is the service's own.
    conn.execute(
        "UPDATE payments SET description = 'annotated' WHERE payment_id = %s", (payment["paymentId"],)
    )
    last = trail(conn, "payments", payment["paymentId"])[-1]
    assert last["actor"] == "system:interpay_payments" and last["via"] == "" and last["source_ip"] is None
    assert (last["before"]["description"], last["after"]["description"]) == ("order 42", "annotated")


def test_the_vault_trail_holds_no_card_number_and_no_key_material(
    gateway: httpx.Client, db: Callable[[str], psycopg.Connection[Any]]
) -> None:
    pan = fresh_card("5")
    card = tokenize(gateway, pan)
    rows = trail(db("vault"), "cards", card["token"])
    assert [r["operation"] for r in rows] == ["INSERT"]
    after = rows[0]["after"]
    assert after["last4"] == pan[-4:] and "ciphertext" not in after and "nonce" not in after
    everything = json.dumps(
        db("vault").execute("SELECT before, after FROM audit_trail").fetchall(), default=str
    )
    assert pan not in everything and "wrapped_key" not in everything


def test_the_merchants_trail_holds_no_secret_and_no_bank_details(
    gateway: httpx.Client, db: Callable[[str], psycopg.Connection[Any]]
) -> None:
    shop = create_merchant(gateway)
    key_id, key = api_key(gateway, shop["merchantId"])
    conn = db("merchants")
    (created, *_changes) = trail(conn, "merchants", shop["merchantId"])
    assert created["actor"] == "operator:tests" and created["after"]["display_name"] == "Shop"
    assert "payout_account" not in created["after"]
    (issued,) = trail(conn, "merchant_api_keys", key_id)
    assert issued["after"]["merchant_id"] == shop["merchantId"] and "secret_hash" not in issued["after"]
    everything = json.dumps(conn.execute("SELECT before, after FROM audit_trail").fetchall(), default=str)
    assert key.split(".", 1)[1] not in everything and "DE89370400440532013000" not in everything
    assert "signing_secret" not in everything


def test_the_trail_and_the_request_log_reach_cassandra(
    profile: Profile, gateway: httpx.Client, db: Callable[[str], psycopg.Connection[Any]], cassandra: Session
) -> None:
    shop = create_merchant(gateway)
    _, key = api_key(gateway, shop["merchantId"])
    as_shop = httpx.Client(
        base_url=f"http://127.0.0.1:{profile.gateway_port}", headers={"x-api-key": key}, timeout=30
    )
    payment = pay(gateway, shop, payer(gateway, 5_000), 1_500)["payment"]
    assert as_shop.get(f"/v1/payments/{payment['paymentId']}").status_code == 200
    today = datetime.now(UTC).date()
    recorded = trail(db("payments"), "payments", payment["paymentId"])

    def by_entity() -> list[Any]:
        rows = list(
            cassandra.execute(
                "SELECT event_time, audit_id, action, status, actor_type, service "
                "FROM audit_events_by_entity "
                "WHERE entity_type = 'payments' AND entity_id = %s AND day = %s",
                (payment["paymentId"], today),
            )
        )
        return rows if len(rows) >= len(recorded) else []

    copied = poll(by_entity, 60, "the payment's audit events in Cassandra")
    assert len(copied) == len(recorded)  # each once, however often Kafka delivered it
    assert {r.status for r in copied} >= {"INITIATED", "CAPTURED"}
    assert {r.service for r in copied} == {"payments"}
    first = next(r for r in copied if r.action == "payments.INSERT")
    by_service = cassandra.execute(
        "SELECT actor_type, actor_id, new_values FROM audit_events WHERE service = 'payments' AND day = %s "
        "AND event_time = %s AND audit_id = %s",
        (today, first.event_time, first.audit_id),
    ).one()
    assert by_service is not None and json.loads(by_service.new_values)["payment_id"] == payment["paymentId"]
    assert (by_service.actor_type, by_service.actor_id) == ("operator", "tests")

    hour = datetime.now(UTC).strftime("%Y-%m-%d-%H")

    def logged() -> list[Any]:
        return [
            r
            for r in cassandra.execute(
                "SELECT method, caller, status_code, TTL(method) AS ttl FROM api_request_logs "
                "WHERE service = 'payments' AND bucket = %s",
                (hour,),
            )
            if r.caller == f"merchant:{shop['merchantId']}"
        ]

    rows = poll(logged, 30, "the merchant's request in the API request log")
    assert {(r.method, r.status_code) for r in rows} == {
        ("/interpay.payments.v1.PaymentService/GetPayment", "OK")
    }
    assert all(0 < r.ttl <= 7 * 24 * 3600 for r in rows)
    unknown = as_shop.get(f"/v1/payments/{uuid.uuid4()}")
    assert unknown.status_code == 404
    poll(lambda: [r for r in logged() if r.status_code == "NOT_FOUND"], 30, "the refused request in the log")
