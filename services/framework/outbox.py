"""The transactional outbox: how a service's domain events reach Kafka, exactly when its
changes commit.

A service never publishes to Kafka from a request. It writes each event as a row of its
own `outbox` table, in the same PostgreSQL transaction as the change the event
describes, with `Outbox.add(conn, events)` (one INSERT), or folded into a statement it
already runs with `Outbox.insert_cte(events)` (no extra round trip). So an event exists
if and only if its change committed: a rolled-back change leaves no event, and a
committed one cannot lose its event to a crash between the commit and a publish.

The `Relay`, a resource every producing service starts with its server, publishes the
rows in `position` order and marks a row published only after the broker acknowledged
it. Its producer is idempotent with `acks=all` (librdkafka through confluent-kafka): a
retry after a lost acknowledgement does not duplicate a message, and the messages of one
partition keep their order. Each event is keyed by its aggregate id, so every event of
one aggregate lands in one partition, in the order the aggregate changed (one
aggregate's changes are serialised by its row lock, so they also get increasing
positions).

Several replicas of a service may run; one relay at a time publishes, the holder of a
PostgreSQL advisory lock on its own connection (a lease that ends when that connection
does, so a dead relay's lease passes to another replica at once). Publishing is at
least once: a relay that dies after the broker acknowledged but before marking the rows
republishes them, with the same `event_id`; consumers record event ids (and may check
`aggregate_version`) to process each event once. If Kafka is down the outbox simply
grows and drains when it returns; `interpay_outbox_lag_seconds` (age of the oldest
unpublished event) and `interpay_outbox_pending_events` show it on /metrics.

Topics are per aggregate type: `interpay.events.v1.<aggregate_type>` (`topic_for`), the
messages' values are serialized `interpay.events.v1.EventEnvelope`s, their keys the
aggregate ids. Published rows are kept for `INTERPAY_OUTBOX_RETENTION_SECONDS` (an hour)
for inspection, then deleted by the relay.

A service adopts the outbox by copying `services/framework/outbox.sql` as its next
migration and adding `Relay(db, service)` to its resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message, Producer
from google.protobuf import any_pb2
from google.protobuf.message import Message as ProtoMessage
from interpay.events.v1.envelope_pb2 import EventEnvelope
from opentelemetry import propagate
from prometheus_client import Counter
from psycopg.rows import dict_row

from services.framework import audit, metrics
from services.framework.config import integer, require
from services.framework.db import Database
from services.framework.proto import timestamp

log = logging.getLogger("interpay.outbox")

TOPIC_PREFIX = "interpay.events.v1."
# The advisory lock whose holder is the one publishing relay of a service's database.
RELAY_LEASE_KEY = 0x1A7E_0B0C

PUBLISHED = Counter(
    "interpay_outbox_published_events_total", "Outbox events acknowledged by Kafka", ["service"]
)
_pending: dict[str, tuple[float, float | None]] = {}  # service -> (count, oldest created epoch)


def topic_for(aggregate_type: str) -> str:
    return TOPIC_PREFIX + aggregate_type


@dataclass(frozen=True)
class Event:
    """One domain event about to be stored: what happened to which aggregate.

    `event_type` is the past-tense name of what happened; it defaults to the payload's
    full message name, as the envelope's contract describes."""

    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    payload: ProtoMessage
    event_type: str = ""
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)


class Outbox:
    """Writes a producer's events into its outbox table, inside the caller's transaction."""

    def __init__(self, producer: str) -> None:
        self.producer = producer

    def envelope(self, event: Event, occurred_at: datetime | None = None) -> EventEnvelope:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the current request's W3C traceparent, if any
        payload = any_pb2.Any()
        payload.Pack(event.payload)
        return EventEnvelope(
            event_id=str(event.event_id),
            event_type=event.event_type or event.payload.DESCRIPTOR.full_name,
            aggregate_type=event.aggregate_type,
            aggregate_id=event.aggregate_id,
            aggregate_version=event.aggregate_version,
            occurred_at=timestamp(occurred_at or datetime.now(UTC)),
            producer=self.producer,
            traceparent=carrier.get("traceparent", ""),
            payload=payload,
        )

    def _columns(self, events: Sequence[Event]) -> list[list[Any]]:
        occurred_at = datetime.now(UTC)
        return [
            [e.event_id for e in events],
            [topic_for(e.aggregate_type) for e in events],
            [e.aggregate_id for e in events],
            [self.envelope(e, occurred_at).SerializeToString() for e in events],
        ]

    _UNNEST = (
        "INSERT INTO outbox (event_id, topic, message_key, envelope) "
        "SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::bytea[])"
    )

    async def add(self, conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
        """Stores the events in the caller's open transaction: one INSERT for all of them."""
        if events:
            await conn.execute(self._UNNEST, self._columns(events))

    def insert_cte(self, events: Sequence[Event], when: str = "") -> tuple[str, list[Any]]:
        """A `, outbox_rows AS (INSERT ...)` clause and its parameters, to append to the CTEs
        of a statement the caller already runs; `when` is an SQL condition (over the
        statement's other CTEs) that must hold for the events to be stored. Empty when
        there is no event."""
        if not events:
            return "", []
        condition = f" WHERE {when}" if when else ""
        return f", outbox_rows AS ({self._UNNEST}{condition})", self._columns(events)


@dataclass
class _Batch:
    """One relay round: the rows sent, and what the broker said about each."""

    rows: list[tuple[int, str, str, bytes]]
    outcome: dict[int, KafkaError | None] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)

    def report(self, position: int) -> Any:
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            self.outcome[position] = err
            if len(self.outcome) == len(self.rows):
                self.done.set()

        return on_delivery

    def acknowledged(self) -> list[int]:
        """The positions to mark published: acknowledged rows, except any row after an
        unacknowledged row of the same key, so a key's events are never marked out of
        order (those are sent again, after the earlier one, in a later round)."""
        blocked: set[str] = set()
        ok = []
        for position, _topic, key, _value in self.rows:
            if key in blocked:
                continue
            if position in self.outcome and self.outcome[position] is None:
                ok.append(position)
            else:
                blocked.add(key)
        return ok


@dataclass(frozen=True)
class _Source:
    """A table whose rows the relay publishes: its oldest unpublished rows (`select`,
    with the batch size as parameter) as (position, topic, key, value), and how to mark
    positions published (`mark`)."""

    select: str
    mark: str
    message: Callable[[dict[str, Any]], tuple[int, str, str, bytes]]


OUTBOX_SOURCE = _Source(
    "SELECT position, topic, message_key, envelope FROM outbox "
    "WHERE published_at IS NULL ORDER BY position LIMIT %s",
    "UPDATE outbox SET published_at = now() WHERE position = ANY(%s)",
    lambda r: (r["position"], r["topic"], r["message_key"], bytes(r["envelope"])),
)


def audit_source(service: str) -> _Source:
    """The audit trail (services/framework/audit.sql) as its own outbox: each row is
    published as an AuditRecorded on the audit topic, keyed by the row it records."""

    def message(row: dict[str, Any]) -> tuple[int, str, str, bytes]:
        envelope = audit.record_envelope(service, row)
        return (
            row["audit_id"],
            topic_for(audit.AGGREGATE_TYPE),
            envelope.aggregate_id,
            envelope.SerializeToString(),
        )

    return _Source(
        "SELECT audit_id, occurred_at, table_name, entity_id, operation, actor, via, source_ip, "
        "user_agent, trace_id, before, after FROM audit_trail "
        "WHERE published_at IS NULL ORDER BY audit_id LIMIT %s",
        "UPDATE audit_trail SET published_at = now() WHERE audit_id = ANY(%s)",
        message,
    )


class Relay:
    """Publishes a service's outbox to Kafka, and its audit trail if its database keeps
    one; a server resource (start/close)."""

    def __init__(
        self,
        db: Database,
        service: str,
        *,
        bootstrap: str | None = None,
        batch_size: int = 500,
        idle_seconds: float | None = None,
    ) -> None:
        self.db = db
        self.service = service
        self.sources = [OUTBOX_SOURCE] + ([audit_source(service)] if db.audited else [])
        self.bootstrap = bootstrap or require("INTERPAY_KAFKA_BOOTSTRAP")
        self.batch_size = batch_size
        self.idle = (
            idle_seconds if idle_seconds is not None else integer("INTERPAY_OUTBOX_POLL_MS", 100) / 1000
        )
        self.retention_seconds = integer("INTERPAY_OUTBOX_RETENTION_SECONDS", 3600)
        self.message_timeout_ms = integer("INTERPAY_OUTBOX_MESSAGE_TIMEOUT_MS", 30000)
        self.is_leader = False
        self._stopping = threading.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._producer: Producer | None = None
        self._fatal: KafkaError | None = None

    def _producer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "client.id": f"{self.service}-outbox-relay",
            # Idempotence brings acks=all, bounded in-flight requests and retries without
            # duplicates or reordering within a partition; acks is spelled out anyway.
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # The Java client's partitioner, so any client maps a key to the same partition.
            "partitioner": "murmur2_random",
            # How long a message may wait for a broker before the round gives up on it; the
            # row stays unpublished and is sent again.
            "message.timeout.ms": self.message_timeout_ms,
            "logger": logging.getLogger("interpay.outbox.kafka"),
            "error_cb": self._on_error,
        }

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():  # the producer is unusable: the next round starts a new one
            self._fatal = err

    async def start(self) -> None:
        self._producer = Producer(self._producer_config())
        register_metrics()
        self._tasks = [
            asyncio.create_task(self._publish_forever(), name=f"{self.service}-outbox-relay"),
            asyncio.create_task(self._measure_forever(), name=f"{self.service}-outbox-lag"),
        ]

    async def close(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 5)

    # -- publishing -----------------------------------------------------------------------
    async def _publish_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.db.url, autocommit=True, row_factory=dict_row
                ) as conn:
                    await self._lead(conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying", extra={"service": self.service})
            finally:
                self.is_leader = False
            await asyncio.sleep(1)

    async def _lead(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Waits for the lease, then publishes until the connection (and lease) is lost."""
        while not self.is_leader:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS held", (RELAY_LEASE_KEY,))
            row = await cur.fetchone()
            self.is_leader = bool(row and row["held"])
            if not self.is_leader:
                await asyncio.sleep(1)
        log.info("outbox relay leads", extra={"service": self.service})
        purged_at = 0.0
        while not self._stopping.is_set():
            published = await self.publish_once(conn)
            if time.monotonic() - purged_at > 60:
                await self._purge(conn)
                purged_at = time.monotonic()
            if published < self.batch_size:
                await asyncio.sleep(self.idle)

    async def publish_once(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Publishes the oldest unpublished rows of each source; returns how many were
        marked published."""
        published = 0
        for source in self.sources:
            published += await self._publish_source(conn, source)
        return published

    async def _publish_source(self, conn: psycopg.AsyncConnection[Any], source: _Source) -> int:
        cur = await conn.execute(source.select, (self.batch_size,))
        rows = [source.message(r) for r in await cur.fetchall()]
        if not rows:
            return 0
        if self._fatal is not None:
            log.error("Kafka producer failed fatally; starting a new one", extra={"error": str(self._fatal)})
            self._fatal = None
            self._producer = Producer(self._producer_config())
        batch = _Batch(rows)
        await asyncio.to_thread(self._send, batch)
        acknowledged = batch.acknowledged()
        if acknowledged:
            await conn.execute(source.mark, (acknowledged,))
            PUBLISHED.labels(self.service).inc(len(acknowledged))
        if len(acknowledged) < len(rows):
            failed = next(e for e in batch.outcome.values() if e is not None) if batch.outcome else None
            log.warning(
                "Kafka did not acknowledge every outbox event; they stay queued",
                extra={
                    "service": self.service,
                    "unacknowledged": len(rows) - len(acknowledged),
                    "error": str(failed),
                },
            )
            await asyncio.sleep(1)
        return len(acknowledged)

    def _send(self, batch: _Batch) -> None:
        """Produces the batch and waits for every delivery report (or the stop signal)."""
        producer = self._producer
        assert producer is not None
        for position, topic, key, value in batch.rows:
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=batch.report(position))
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.1)
        while not batch.done.is_set() and not self._stopping.is_set():
            producer.poll(0.1)

    async def _purge(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(
            "DELETE FROM outbox WHERE position IN (SELECT position FROM outbox "
            "WHERE published_at < now() - make_interval(secs => %s) ORDER BY position LIMIT 10000)",
            (self.retention_seconds,),
        )

    # -- lag ------------------------------------------------------------------------------
    async def _measure_forever(self) -> None:
        while True:
            try:
                async with self.db.transaction() as conn:
                    cur = await conn.execute(_LAG_AUDITED if self.db.audited else _LAG)
                    row = await cur.fetchone()
                assert row is not None
                oldest = row["oldest"]
                _pending[self.service] = (float(row["pending"]), float(oldest) if oldest else None)
            except Exception:
                log.exception("outbox lag query failed", extra={"service": self.service})
            await asyncio.sleep(1)


_LAG = (
    "SELECT count(*) AS pending, extract(epoch FROM min(created_at)) AS oldest "
    "FROM outbox WHERE published_at IS NULL"
)
_LAG_AUDITED = (
    "SELECT count(*) AS pending, extract(epoch FROM min(created_at)) AS oldest FROM ("
    " SELECT created_at FROM outbox WHERE published_at IS NULL"
    " UNION ALL SELECT occurred_at FROM audit_trail WHERE published_at IS NULL) unpublished"
)
_registered = False


def register_metrics() -> None:
    """The outbox gauges, read at scrape time; the lag grows between measurements while an
    event stays unpublished."""
    global _registered
    if _registered:
        return
    _registered = True

    def lag() -> Iterable[tuple[list[str], float]]:
        now = time.time()
        for service, (_count, oldest) in _pending.items():
            yield [service], max(0.0, now - oldest) if oldest is not None else 0.0

    metrics.register_gauge(
        "interpay_outbox_lag_seconds", "Age of the oldest unpublished outbox event", ["service"], lag
    )
    metrics.register_gauge(
        "interpay_outbox_pending_events",
        "Outbox events not yet acknowledged by Kafka",
        ["service"],
        lambda: [([service], count) for service, (count, _oldest) in _pending.items()],
    )
