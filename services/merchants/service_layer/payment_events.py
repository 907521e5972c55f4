"""What the merchants service makes of the payment events (topic interpay.events.v1.payment,
consumer group `merchants`, services/framework/consumer.py).

In the transaction that records the event as processed (so exactly once):

- settlement lines: a CAPTURE line for PaymentCaptured (the captured amount and the fee),
  a REFUND line for PaymentPartiallyRefunded / PaymentRefunded (what this refund added to
  the payment's refunded amount: the events of one payment arrive in order, one per
  version, so the running total kept per payment gives each refund's amount);
- per-minute metric totals (`captured_minor:<CUR>`, `captured_count`,
  `refunded_minor:<CUR>`, `refund_count`);
- rows for Cassandra in `analytics_outbox`: a payment log for every payment event, and
  the touched metric minutes. `copy_to_cassandra` (a periodic job) writes them with
  idempotent writes and then deletes them, so Cassandra gets every row at least once and
  shows each exactly once.

Events of merchants this service does not know are not its to settle: ignored.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from google.protobuf import json_format
from interpay.payments.v1 import payments_service_pb2 as payments_pb
from psycopg.types.json import Jsonb

from services.framework.consumer import ReceivedEvent
from services.framework.db import Database
from services.framework.outbox import topic_for
from services.merchants.adapters.analytics import Analytics

log = logging.getLogger("interpay.merchants.payment_events")
TOPICS = (topic_for("payment"),)
_PREFIX = "interpay.payments.v1."


class UnexpectedPayload(ValueError):
    """The event's payload is not a Payment: the event is poison."""


def _payment(event: ReceivedEvent) -> payments_pb.Payment:
    payment = payments_pb.Payment()
    payload = event.envelope.payload
    if payload.TypeName() != payment.DESCRIPTOR.full_name or not payload.Unpack(payment):
        raise UnexpectedPayload(f"{event.envelope.event_type} carries {payload.type_url!r}")
    return payment


async def handle(conn: psycopg.AsyncConnection[Any], event: ReceivedEvent) -> None:
    envelope = event.envelope
    if envelope.aggregate_type != "payment":
        return
    payment = _payment(event)
    merchant_id = uuid.UUID(payment.merchant_id)
    cur = await conn.execute("SELECT 1 FROM merchants WHERE merchant_id = %s", (merchant_id,))
    if await cur.fetchone() is None:
        return
    at = envelope.occurred_at.ToDatetime(tzinfo=UTC)
    what = envelope.event_type.removeprefix(_PREFIX)
    currency = payment.amount.currency
    metrics: dict[str, int] = {}
    amount = payment.amount.amount_minor
    if what == "PaymentCaptured":
        amount = payment.captured_amount.amount_minor
        await _line(conn, event, payment, "CAPTURE", amount, payment.fee_amount.amount_minor, at)
        metrics = {f"captured_minor:{currency}": amount, "captured_count": 1}
    elif what in ("PaymentPartiallyRefunded", "PaymentRefunded"):
        total = payment.refunded_amount.amount_minor
        cur = await conn.execute(
            "SELECT refunded_minor FROM payment_refund_totals WHERE payment_id = %s FOR UPDATE",
            (uuid.UUID(payment.payment_id),),
        )
        row = await cur.fetchone()
        before = int(row["refunded_minor"]) if row else 0
        amount = total - before
        if amount > 0:
            await conn.execute(
                "INSERT INTO payment_refund_totals (payment_id, refunded_minor) VALUES (%s, %s) "
                "ON CONFLICT (payment_id) DO UPDATE SET refunded_minor = EXCLUDED.refunded_minor",
                (uuid.UUID(payment.payment_id), total),
            )
            await _line(conn, event, payment, "REFUND", amount, 0, at)
            metrics = {f"refunded_minor:{currency}": amount, "refund_count": 1}
    minute = at.replace(second=0, microsecond=0)
    outbox: list[tuple[str, dict[str, Any]]] = [
        (
            "PAYMENT_LOG",
            {
                "merchant_id": str(merchant_id),
                "occurred_at": at.isoformat(),
                "event_id": envelope.event_id,
                "payment_id": payment.payment_id,
                "event_type": envelope.event_type,
                "state": payments_pb.Payment.State.Name(payment.state).removeprefix("STATE_"),
                "amount_minor": amount,
                "currency": currency,
                # The payment as the API shows it: a card appears as brand and last4 only.
                "log_data": json.dumps(json_format.MessageToDict(payment), sort_keys=True),
            },
        )
    ]
    for metric, value in metrics.items():
        await conn.execute(
            "INSERT INTO merchant_metric_minutes (merchant_id, minute, metric, value) "
            "VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (merchant_id, minute, metric) DO UPDATE "
            "SET value = merchant_metric_minutes.value + EXCLUDED.value",
            (merchant_id, minute, metric, value),
        )
        outbox.append(
            (
                "MERCHANT_METRIC",
                {"merchant_id": str(merchant_id), "minute": minute.isoformat(), "metric": metric},
            )
        )
    for kind, data in outbox:
        await conn.execute(
            "INSERT INTO analytics_outbox (kind, row_data) VALUES (%s, %s)", (kind, Jsonb(data))
        )


async def _line(
    conn: psycopg.AsyncConnection[Any],
    event: ReceivedEvent,
    payment: payments_pb.Payment,
    kind: str,
    amount: int,
    fee: int,
    at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO settlement_lines (event_id, merchant_id, payment_id, kind, amount_minor, fee_minor, "
        "currency, occurred_at, settlement_date) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            event.event_id,
            uuid.UUID(payment.merchant_id),
            uuid.UUID(payment.payment_id),
            kind,
            amount,
            fee,
            payment.amount.currency,
            at,
            at.date(),
        ),
    )


async def copy_to_cassandra(db: Database, analytics: Analytics, batch: int = 500) -> int:
    """Writes the waiting rows to Cassandra (metric rows with their minute's current total),
    then deletes them; a crash in between writes them again, to the same effect."""
    async with db.transaction() as conn:
        cur = await conn.execute(
            "SELECT o.position, o.kind, o.row_data, m.value FROM analytics_outbox o "
            "LEFT JOIN merchant_metric_minutes m ON o.kind = 'MERCHANT_METRIC' "
            "AND m.merchant_id = (o.row_data->>'merchant_id')::uuid "
            "AND m.minute = (o.row_data->>'minute')::timestamptz AND m.metric = o.row_data->>'metric' "
            "ORDER BY o.position LIMIT %s",
            (batch,),
        )
        rows = await cur.fetchall()
    if not rows:
        return 0
    writes = []
    for r in rows:
        data = dict(r["row_data"])
        if r["kind"] == "MERCHANT_METRIC":
            data["value"] = r["value"] or 0
            data["day"] = datetime.fromisoformat(data["minute"]).date().isoformat()
        writes.append((r["kind"], data))
    await analytics.write(writes)
    async with db.transaction() as conn:
        await conn.execute(
            "DELETE FROM analytics_outbox WHERE position = ANY(%s)", ([r["position"] for r in rows],)
        )
    return len(rows)
