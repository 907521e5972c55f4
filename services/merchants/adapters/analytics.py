"""Cassandra, as the merchants service writes its analytics: payment logs per merchant and
hour, and per-minute merchant metrics, into the `interpay_logs` keyspace
(infra/cassandra/schema/). Every write is idempotent: a payment log's key is derived from
its event (a time UUID built from the event's time and id), and a metric row gets the
absolute value of its minute, so writing a row twice leaves one row with one value.

A server resource: the driver (blocking) connects at start, in a thread; a Cassandra that
is down only delays the copy (the rows wait in PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import date, datetime
from typing import Any

from cassandra.cluster import Cluster, Session
from cassandra.util import uuid_from_time

from services.framework.config import integer, optional

log = logging.getLogger("interpay.merchants.analytics")
KEYSPACE = "interpay_logs"


def log_id(occurred_at: datetime, event_id: uuid.UUID) -> uuid.UUID:
    """A time UUID at the event's time whose node and clock sequence come from the event id:
    the same event always gives the same id, distinct events (almost surely) distinct ones."""
    bits = event_id.int
    return uuid_from_time(occurred_at, node=bits & 0xFFFF_FFFF_FFFF, clock_seq=(bits >> 48) & 0x3FFF)


class Analytics:
    def __init__(self, hosts: list[str] | None = None, port: int | None = None) -> None:
        self.hosts = hosts or optional("INTERPAY_CASSANDRA_HOSTS", "127.0.0.1").split(",")
        self.port = port or integer("INTERPAY_CASSANDRA_PORT", 9042)
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._statements: dict[str, Any] = {}

    async def start(self) -> None:
        return None  # connects on first use: the service starts even while Cassandra does not

    async def close(self) -> None:
        if self._cluster is not None:
            await asyncio.to_thread(self._cluster.shutdown)

    def _connect(self) -> Session:
        if self._session is None:
            cluster = Cluster(self.hosts, port=self.port, connect_timeout=10)
            session = cluster.connect(KEYSPACE)
            self._statements = {
                "PAYMENT_LOG": session.prepare(
                    "INSERT INTO payment_logs (merchant_id, bucket, log_timestamp, log_id, payment_id, "
                    "event_type, state, amount_minor, currency, log_data) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                "MERCHANT_METRIC": session.prepare(
                    "INSERT INTO merchant_metrics (merchant_id, day, metric, minute, value) "
                    "VALUES (?, ?, ?, ?, ?)"
                ),
            }
            self._cluster, self._session = cluster, session
        return self._session

    async def write(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        await asyncio.to_thread(self._write, rows)

    def _write(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        session = self._connect()
        futures = []
        for kind, row in rows:
            if kind == "PAYMENT_LOG":
                at = datetime.fromisoformat(row["occurred_at"])
                values: tuple[Any, ...] = (
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
            else:
                minute = datetime.fromisoformat(row["minute"])
                values = (
                    uuid.UUID(row["merchant_id"]),
                    date.fromisoformat(row["day"]),
                    row["metric"],
                    minute,
                    int(row["value"]),
                )
            futures.append(session.execute_async(self._statements[kind], values))
        for future in futures:
            future.result()
