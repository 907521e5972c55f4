"""No card number or CVV anywhere it could stay: after card payments (one approved, one
captured and refunded, one declined) with a fresh card number and CVV, the number is in no
column of any service's database (only the vault's ciphertext holds it), the CVV in no
saga record, and neither in any log line of any process."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
from interpay.orchestrator.v1 import orchestrator_service_pb2 as saga_pb

from services.framework.topology import SERVICES, Profile
from tests.conftest import ROOT, database_url
from tests.e2e.test_card_payments import fresh_card, pay_by_card, tokenize
from tests.e2e.test_payments_flow import CUR, create_merchant


def _columns(conn: psycopg.Connection) -> list[tuple[str, str, str, str]]:  # type: ignore[type-arg]
    return conn.execute(
        "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
        "AND data_type IN ('text', 'character varying', 'character', 'jsonb', 'json', 'bytea')"
    ).fetchall()


def _contains(column: str, data_type: str) -> str:
    """A predicate: the column holds the needle, as text or as raw bytes."""
    if data_type == "bytea":
        return f"position(convert_to(%s, 'UTF8') in \"{column}\") > 0"
    return f'position(%s in "{column}"::text) > 0'


def test_card_numbers_and_cvvs_are_nowhere_at_rest(
    gateway: httpx.Client, profile: Profile, mesh_secrets
) -> None:  # type: ignore[no-untyped-def]
    pan, declined_pan, cvv = fresh_card("45"), "4000000000009995", f"{random.randint(100, 999)}"
    started = datetime.now(UTC)
    shop = create_merchant(gateway, fee_bps=0)
    card = tokenize(gateway, pan)
    paid = pay_by_card(gateway, shop, card["token"], 1_500, cvv=cvv)
    assert paid.status_code == 200, paid.text
    refund = gateway.post(
        f"/v1/payments/{paid.json()['payment']['paymentId']}/refunds",
        headers={"Idempotency-Key": str(uuid.uuid4())},
        json={"amount": {"amountMinor": "500", "currency": CUR}, "reason": "returned"},
    )
    assert refund.status_code == 200, refund.text
    assert (
        pay_by_card(gateway, shop, tokenize(gateway, declined_pan)["token"], 700, cvv=cvv).status_code == 400
    )

    found: list[str] = []
    scanned = 0
    for spec in SERVICES:
        with psycopg.connect(database_url(profile, mesh_secrets, spec.name)) as conn:
            for schema, table, column, data_type in _columns(conn):
                scanned += 1
                hit = conn.execute(
                    f'SELECT count(*) FROM "{schema}"."{table}" WHERE {_contains(column, data_type)}',  # noqa: S608
                    (pan,),
                ).fetchone()
                if hit and hit[0]:
                    found.append(f"{spec.name}: {schema}.{table}.{column}")
            if spec.name == "orchestrator":  # the saga store keeps inputs: never the CVV
                recent = (
                    "SELECT input FROM sagas WHERE saga_type = 'PAYMENT' AND created_at > %s::timestamptz"
                )
                for (payload,) in conn.execute(recent, (started,)):
                    assert saga_pb.PaymentSagaInput.FromString(bytes(payload)).cvv == ""
    assert scanned > 50, "the scan must actually look at the databases"
    assert not found, f"card number stored in clear: {found}"

    logs = list((ROOT / ".data" / profile.name / "logs").glob("*.log"))
    assert logs
    for path in logs:
        text = Path(path).read_text(errors="replace")
        assert pan not in text and declined_pan not in text, f"card number in {path.name}"
        assert f'"cvv": "{cvv}"' not in text and f"cvv={cvv}" not in text, f"CVV in {path.name}"
