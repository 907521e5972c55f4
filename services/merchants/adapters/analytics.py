"""Cassandra, as the merchants service writes its analytics: payment logs per merchant and
hour, and per-minute merchant metrics, into the `interpay_logs` keyspace
(infra/cassandra/schema/). Every write is idempotent: a payment log's key is derived from
its event (a time UUID built from the event's time and id), and a metric row gets the
absolute value of its minute, so writing a row twice leaves one row with one value.

A server resource over the framework's Cassandra client (services/framework/cassandra.py),
which connects on first use: a Cassandra that is down only delays the copy (the rows wait
in PostgreSQL, and the copier raises `CassandraUnavailable` until it is back)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from cassandra.util import uuid_from_time

from services.framework.cassandra import Cassandra, CassandraSettings

STATEMENTS = {
    "PAYMENT_LOG": (
        "INSERT INTO payment_logs (merchant_id, bucket, log_timestamp, log_id, payment_id, "
        "event_type, state, amount_minor, currency, log_data) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    "MERCHANT_METRIC": (
        "INSERT INTO merchant_metrics (merchant_id, day, metric, minute, value) VALUES (?, ?, ?, ?, ?)"
    ),
}


def log_id(occurred_at: datetime, event_id: uuid.UUID) -> uuid.UUID:
    """A time UUID at the event's time whose node and clock sequence come from the event id:
    the same event always gives the same id, distinct events (almost surely) distinct ones."""
    bits = event_id.int
    return uuid_from_time(occurred_at, node=bits & 0xFFFF_FFFF_FFFF, clock_seq=(bits >> 48) & 0x3FFF)


def _values(kind: str, row: dict[str, Any]) -> tuple[Any, ...]:
    if kind == "PAYMENT_LOG":
        at = datetime.fromisoformat(row["occurred_at"])
        return (
            uuid.UUID(row["merchant_id"]),
            at.strftime("%Y-%m-%d-%H"),
            at,
            log_id(at, uuid.UUID(row["event_id"])),
            uuid.UUID(row["payment_id"]),
            row["event_type"],
            row["state"],
            int(row["amount_minor"]),
            row["currency"],
            row["log_data"],
        )
    minute = datetime.fromisoformat(row["minute"])
    return (
        uuid.UUID(row["merchant_id"]),
        date.fromisoformat(row["day"]),
        row["metric"],
        minute,
        int(row["value"]),
    )


class Analytics:
    def __init__(self, settings: CassandraSettings | None = None) -> None:
        self.cassandra = Cassandra(STATEMENTS, settings)

    async def start(self) -> None:
        await self.cassandra.start()

    async def close(self) -> None:
        await self.cassandra.close()

    async def write(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """Writes the rows (kind, data) at once, each to its own partition; raises if any
        failed, after all have finished (the caller writes them all again)."""
        await self.cassandra.execute_concurrently([(kind, _values(kind, row)) for kind, row in rows])
