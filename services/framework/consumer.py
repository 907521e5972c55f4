"""Consuming domain events from Kafka, each effect exactly once.

`EventConsumer` is a server resource (start/close) that reads the envelopes of some
`interpay.events.v1.<aggregate>` topics (services/framework/outbox.py publishes them) in
a Kafka consumer group and hands each one to the service's handler, `handle(conn,
event)`, inside a PostgreSQL transaction of the service's own database (one transaction
for each partition's share of a batch, or one per event if that fails). In that same
transaction the consumer inserts the event's id into `processed_events`
(services/framework/consumer.sql, copied as a migration): the effect and the record of
having had it commit together or not at all. An event seen again (Kafka redelivers after
a crash between the commit and the offset commit; a producer's relay may publish an
event twice) finds its row and is skipped: it changes nothing.

Offsets are committed by hand, and only for messages whose transaction has committed
(or which were skipped or dead-lettered), after each batch. A consumer killed mid-batch
therefore re-reads at most the uncommitted part of its batch after a restart, and the
processed-event records turn those re-reads into no-ops.

Failures. A failure that says nothing about the event (the database or a peer is
unreachable or refuses us: `psycopg.OperationalError`, a gRPC status other than
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION and OUT_OF_RANGE, the
framework's `Unavailable`, or `RetryLater`) is retried with capped exponential backoff for
as long as it lasts; the partition waits, so order is kept. Any other failure counts as
an attempt; after `INTERPAY_CONSUMER_MAX_ATTEMPTS` (5) attempts the event is poison: its
message goes unchanged (same key and value) to the dead-letter topic `<topic>.dlq`, with
headers saying why and where it came from, is recorded as DEAD_LETTERED, and the
consumer moves on. A message that is not an envelope at all goes there at once.

Metrics on /metrics: `interpay_consumer_lag_messages` (per consumer, topic and partition:
the high watermark minus the committed offset, measured every few seconds) and
`interpay_consumer_events_total` (per consumer and outcome: processed, duplicate,
dead_lettered, retried). Records older than `INTERPAY_CONSUMER_DEDUP_RETENTION_HOURS`
(168, a week: longer than the topics keep messages) are purged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from google.protobuf.message import DecodeError
from interpay.events.v1.envelope_pb2 import EventEnvelope
from opentelemetry import propagate, trace
from prometheus_client import Counter

from services.framework import errors, metrics
from services.framework.config import integer, require
from services.framework.db import Database

log = logging.getLogger("interpay.consumer")
tracer = trace.get_tracer("interpay.consumer")

DLQ_SUFFIX = ".dlq"

EVENTS = Counter(
    "interpay_consumer_events_total", "Events handled by consumers, by outcome", ["consumer", "outcome"]
)
_lag: dict[tuple[str, str, int], float] = {}  # (consumer, topic, partition) -> messages behind


def dlq_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


class RetryLater(Exception):  # noqa: N818 - says what the consumer does with it
    """Raised by a handler when the event cannot be handled yet for a reason outside it (a
    peer is down): retried without counting as an attempt."""


@dataclass(frozen=True)
class ReceivedEvent:
    """One event as read from Kafka."""

    envelope: EventEnvelope
    topic: str
    partition: int
    offset: int

    @property
    def event_id(self) -> uuid.UUID:
        return uuid.UUID(self.envelope.event_id)


Handler = Callable[[psycopg.AsyncConnection[Any], ReceivedEvent], Awaitable[None]]


def transient(exc: BaseException) -> bool:
    """Whether a failure is about the world rather than the event: retried until it passes."""
    if isinstance(exc, RetryLater | psycopg.OperationalError | errors.Unavailable):
        return True
    if isinstance(exc, grpc.aio.AioRpcError | grpc.RpcError) and hasattr(exc, "code"):
        # A peer refusing the request itself says something about the event; any other
        # status (down, overloaded, misconfigured, refusing us) is the world's problem.
        return exc.code() not in _REFUSALS
    return False


_REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}


class EventConsumer:
    """Consumes `topics` as Kafka group `name` and applies `handler` to each event once."""

    def __init__(
        self,
        db: Database,
        name: str,
        topics: Sequence[str],
        handler: Handler,
        *,
        bootstrap: str | None = None,
        batch_size: int = 100,
        max_attempts: int | None = None,
        retry_base_seconds: float | None = None,
        ordered: bool = True,
    ) -> None:
        self.db = db
        # False: the handler's effects do not depend on the order of events (each is keyed
        # by its own event, as the audit sink's rows are), so a batch is handled
        # concurrently, each event still in its own transaction with its record.
        self.ordered = ordered
        self.name = name
        self.topics = list(topics)
        self.handler = handler
        self.bootstrap = bootstrap or require("INTERPAY_KAFKA_BOOTSTRAP")
        self.batch_size = batch_size
        self.max_attempts = max_attempts or integer("INTERPAY_CONSUMER_MAX_ATTEMPTS", 5)
        self.retry_base = (
            retry_base_seconds
            if retry_base_seconds is not None
            else integer("INTERPAY_CONSUMER_RETRY_BASE_MS", 200) / 1000
        )
        self.retention_hours = integer("INTERPAY_CONSUMER_DEDUP_RETENTION_HOURS", 168)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def _consumer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.name,
            "client.id": f"{self.name}-consumer",
            "enable.auto.commit": False,  # committed by hand, after the effect committed
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",  # a new group reads what is still kept
            "isolation.level": "read_committed",
            "topic.metadata.refresh.interval.ms": 5000,
            # A member killed without leaving the group holds its partitions until its
            # session times out: 10 s rather than the default 45 s.
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 3000,
            "logger": logging.getLogger("interpay.consumer.kafka"),
        }

    async def start(self) -> None:
        register_metrics()
        await asyncio.to_thread(self._ensure_topics)
        self._producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "client.id": f"{self.name}-dlq",
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",
                "logger": logging.getLogger("interpay.consumer.kafka"),
            }
        )
        self._consumer = Consumer(self._consumer_config())
        self._consumer.subscribe(self.topics)
        self._task = asyncio.create_task(self._consume_forever(), name=f"{self.name}-consumer")

    async def close(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=15)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 5)

    def _ensure_topics(self) -> None:
        """Creates the topics and their dead-letter topics if missing (broker defaults), so
        the group is assigned partitions before the first event is published."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        wanted = [t for topic in self.topics for t in (topic, dlq_topic(topic))]
        try:
            existing = set(admin.list_topics(timeout=10).topics)
            missing = [NewTopic(t) for t in wanted if t not in existing]
            if not missing:
                return
            for topic, future in admin.create_topics(missing, request_timeout=10).items():
                try:
                    future.result()
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        log.warning("could not create topic", extra={"topic": topic, "error": str(exc)})
        except KafkaException as exc:  # Kafka down: topics appear later, subscription follows
            log.warning("could not ensure topics", extra={"error": str(exc)})

    # -- the loop -------------------------------------------------------------------------
    async def _consume_forever(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        measured_at = 0.0
        purged_at = time.monotonic()
        try:
            while not self._stopping.is_set():
                try:
                    messages = await asyncio.to_thread(consumer.consume, self.batch_size, 0.5)
                    await self._process_batch(messages)
                    if time.monotonic() - measured_at > 5:
                        await asyncio.to_thread(self._measure_lag)
                        measured_at = time.monotonic()
                    if time.monotonic() - purged_at > 3600:
                        await self._purge()
                        purged_at = time.monotonic()
                except _Stopping:
                    break
                except Exception:
                    log.exception("consumer round failed; retrying", extra={"consumer": self.name})
                    await self._sleep(1)
        finally:
            await asyncio.to_thread(consumer.close)  # leaves the group: partitions move at once

    async def _process_batch(self, messages: list[Message]) -> None:
        """Processes a batch and commits the offsets of what was handled.

        The batch is split by partition (a partition is the unit of order: events are keyed
        by aggregate). An ordered consumer handles its partitions concurrently, each
        partition's events in order in one transaction (`_apply_many`); an unordered one
        handles the whole batch in one transaction, concurrently. One commit for a run of
        events instead of one each is what lets a consumer keep up with a busy producer. If
        that transaction fails for any reason, it changed nothing, and its events are
        handled again one by one (`_process`: retries, dead letters), as if batching did not
        exist. If a message's handling fails unexpectedly even then, each partition is
        rewound to its first unhandled message, so nothing after it is committed past it;
        it is read again in the next round."""
        consumer = self._consumer
        assert consumer is not None
        done: dict[tuple[str, int], int] = {}
        valid: list[Message] = []
        for message in messages:
            if message.error() is not None:
                self._log_kafka_error(message.error())
            else:
                valid.append(message)
        try:
            if not self.ordered:
                if not await self._apply_many(valid):
                    await self._process_concurrently(valid, done)
                else:
                    for message in valid:
                        done[_position(message)] = (message.offset() or 0) + 1
            else:
                partitions: dict[tuple[str, int], list[Message]] = {}
                for message in valid:
                    partitions.setdefault(_position(message), []).append(message)
                outcomes = await asyncio.gather(
                    *(self._process_partition(run, done) for run in partitions.values()),
                    return_exceptions=True,
                )
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome
        except BaseException:
            rewind: dict[tuple[str, int], int] = {}
            for message in valid:
                key = _position(message)
                offset = message.offset() or 0
                if offset >= done.get(key, -1) and key not in rewind:
                    rewind[key] = offset
            for (topic, partition), offset in rewind.items():
                with contextlib.suppress(KafkaException):
                    consumer.seek(TopicPartition(topic, partition, offset))
            raise
        finally:
            if done:
                await asyncio.to_thread(self._commit, done)

    async def _process_partition(self, run: list[Message], done: dict[tuple[str, int], int]) -> None:
        """One partition's messages, in order: all in one transaction, or one by one."""
        key = _position(run[0])
        if await self._apply_many(run):
            done[key] = (run[-1].offset() or 0) + 1
            return
        for message in run:
            await self._process(message)
            done[key] = (message.offset() or 0) + 1

    async def _process_concurrently(self, messages: list[Message], done: dict[tuple[str, int], int]) -> None:
        """Handles the messages one by one but at once; `done` gets, per partition, the
        offset after the last message before its first failure (the rewind starts there),
        and the first failure is raised once every message has finished."""
        outcomes = await asyncio.gather(*(self._process(m) for m in messages), return_exceptions=True)
        failed: set[tuple[str, int]] = set()
        first: BaseException | None = None
        for message, outcome in zip(messages, outcomes, strict=True):
            key = _position(message)
            if isinstance(outcome, BaseException):
                failed.add(key)
                first = first or outcome
            elif key not in failed:
                done[key] = (message.offset() or 0) + 1
        if first is not None:
            raise first

    def _log_kafka_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
            log.debug("kafka", extra={"consumer": self.name, "error": str(err)})
        else:
            log.warning("kafka consumer error", extra={"consumer": self.name, "error": str(err)})

    def _commit(self, done: dict[tuple[str, int], int]) -> None:
        assert self._consumer is not None
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in done.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # A rebalance took the partitions away: their new owner re-reads the messages and
            # finds them processed.
            log.warning("offset commit failed", extra={"consumer": self.name, "error": str(exc)})

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        if self._stopping.is_set():
            raise _Stopping

    def _backoff(self, attempt: int) -> float:
        return min(30.0, self.retry_base * 2 ** min(attempt - 1, 10)) * random.uniform(0.5, 1.0)

    # -- one message ----------------------------------------------------------------------
    async def _process(self, message: Message) -> None:
        try:
            event = _received(message)
        except (DecodeError, ValueError) as exc:
            await self._dead_letter(message, None, f"not an EventEnvelope with a UUID event_id: {exc}", 0)
            return
        envelope = event.envelope
        with self._span(event):
            attempt = 0
            transient_failures = 0
            while True:
                try:
                    handled = await self._apply(event)
                    EVENTS.labels(self.name, "processed" if handled else "duplicate").inc()
                    return
                except Exception as exc:
                    if transient(exc):
                        transient_failures += 1
                        log.warning(
                            "event waits for a dependency",
                            extra={"consumer": self.name, "event_id": envelope.event_id, "error": repr(exc)},
                        )
                        await self._sleep(self._backoff(transient_failures))
                        continue
                    attempt += 1
                    EVENTS.labels(self.name, "retried").inc()
                    log.warning(
                        "event handling failed",
                        extra={
                            "consumer": self.name,
                            "event_id": envelope.event_id,
                            "event_type": envelope.event_type,
                            "attempt": attempt,
                            "error": repr(exc),
                        },
                    )
                    if attempt >= self.max_attempts:
                        await self._dead_letter(message, event, repr(exc)[:1000], attempt)
                        return
                    await self._sleep(self._backoff(attempt))

    async def _apply(self, event: ReceivedEvent) -> bool:
        """The effect and its record in one transaction; False if the event was seen before."""
        async with self.db.transaction() as conn:
            if not await self._record(conn, event, "PROCESSED"):
                return False
            await self.handler(conn, event)
        return True

    async def _apply_many(self, messages: list[Message]) -> bool:
        """Handles `messages` in one transaction: their records in one statement, then the
        handler for each event not seen before (in order if the consumer is ordered, else
        concurrently). True if it committed; False if it changed nothing, because there was
        nothing to batch, a message is not an envelope, or anything failed (the caller then
        handles them one by one, which retries, dead-letters and logs as it should)."""
        if len(messages) < 2:
            return False
        try:
            events = [_received(m) for m in messages]
            ids = [e.event_id for e in events]
        except (DecodeError, ValueError):
            return False
        try:
            async with self.db.transaction() as conn:
                cur = await conn.execute(
                    "INSERT INTO processed_events (consumer, event_id, event_type, topic, kafka_partition, "
                    "kafka_offset, outcome) SELECT %s, e.*, 'PROCESSED' FROM unnest("
                    "%s::uuid[], %s::text[], %s::text[], %s::int[], %s::bigint[]) AS e "
                    "ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id",
                    (
                        self.name,
                        ids,
                        [e.envelope.event_type for e in events],
                        [e.topic for e in events],
                        [e.partition for e in events],
                        [e.offset for e in events],
                    ),
                )
                new = {row["event_id"] for row in await cur.fetchall()}
                fresh, first_seen = [], set()
                for event, event_id in zip(events, ids, strict=True):
                    if event_id in new and event_id not in first_seen:  # a batch may hold one event twice
                        first_seen.add(event_id)
                        fresh.append(event)
                if self.ordered:
                    for event in fresh:
                        await self._handle(conn, event)
                else:
                    outcomes = await asyncio.gather(
                        *(self._handle(conn, e) for e in fresh), return_exceptions=True
                    )
                    for outcome in outcomes:
                        if isinstance(outcome, BaseException):
                            raise outcome
        except Exception as exc:
            log.debug("batch rolled back; one by one", extra={"consumer": self.name, "error": repr(exc)})
            return False
        EVENTS.labels(self.name, "processed").inc(len(fresh))
        if len(events) > len(fresh):
            EVENTS.labels(self.name, "duplicate").inc(len(events) - len(fresh))
        return True

    async def _handle(self, conn: psycopg.AsyncConnection[Any], event: ReceivedEvent) -> None:
        with self._span(event):
            await self.handler(conn, event)

    @staticmethod
    def _span(event: ReceivedEvent) -> contextlib.AbstractContextManager[trace.Span]:
        """The event's consumer span, a child of the span that published it."""
        envelope = event.envelope
        context = propagate.extract({"traceparent": envelope.traceparent} if envelope.traceparent else {})
        return tracer.start_as_current_span(
            f"consume {event.topic}",
            context=context,
            kind=trace.SpanKind.CONSUMER,
            attributes={"messaging.system": "kafka", "interpay.event_type": envelope.event_type},
        )

    async def _record(self, conn: psycopg.AsyncConnection[Any], event: ReceivedEvent, outcome: str) -> bool:
        cur = await conn.execute(
            "INSERT INTO processed_events (consumer, event_id, event_type, topic, kafka_partition, "
            "kafka_offset, outcome) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id",
            (
                self.name,
                event.event_id,
                event.envelope.event_type,
                event.topic,
                event.partition,
                event.offset,
                outcome,
            ),
        )
        return await cur.fetchone() is not None

    async def _dead_letter(
        self, message: Message, event: ReceivedEvent | None, error: str, attempts: int
    ) -> None:
        """Publishes the message unchanged to `<topic>.dlq` and waits for Kafka's
        acknowledgement (retrying while Kafka is down), then records the event as handled."""
        topic = message.topic() or ""
        headers = [
            ("interpay-dlq-error", error.encode()),
            ("interpay-dlq-consumer", self.name.encode()),
            ("interpay-dlq-topic", topic.encode()),
            ("interpay-dlq-partition", str(message.partition()).encode()),
            ("interpay-dlq-offset", str(message.offset()).encode()),
            ("interpay-dlq-attempts", str(attempts).encode()),
        ]
        failures = 0
        while True:
            outcome: list[KafkaError | None] = []
            await asyncio.to_thread(self._produce, dlq_topic(topic), message, headers, outcome)
            if outcome and outcome[0] is None:
                break
            failures += 1
            log.warning(
                "dead-letter publish failed; retrying",
                extra={"consumer": self.name, "error": str(outcome[0] if outcome else "timeout")},
            )
            await self._sleep(self._backoff(failures))
        log.error(
            "event dead-lettered",
            extra={
                "consumer": self.name,
                "topic": topic,
                "offset": message.offset(),
                "event_id": event.envelope.event_id if event else "",
                "error": error,
            },
        )
        EVENTS.labels(self.name, "dead_lettered").inc()
        if event is not None:
            while True:
                try:
                    async with self.db.transaction() as conn:
                        await self._record(conn, event, "DEAD_LETTERED")
                    return
                except psycopg.OperationalError as exc:
                    log.warning("recording a dead letter failed", extra={"error": repr(exc)})
                    await self._sleep(1)

    def _produce(
        self,
        topic: str,
        message: Message,
        headers: list[tuple[str, bytes]],
        outcome: list[KafkaError | None],
    ) -> None:
        producer = self._producer
        assert producer is not None

        def report(err: KafkaError | None, _msg: Message) -> None:
            outcome.append(err)

        producer.produce(topic, value=message.value(), key=message.key(), headers=headers, on_delivery=report)
        deadline = time.monotonic() + 30
        while not outcome and time.monotonic() < deadline:
            producer.poll(0.1)

    # -- upkeep ---------------------------------------------------------------------------
    def _measure_lag(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        assignment = consumer.assignment()
        seen = set()
        if assignment:
            for tp in consumer.committed(assignment, timeout=5):
                _low, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                committed = tp.offset if tp.offset >= 0 else _low
                _lag[(self.name, tp.topic, tp.partition)] = float(max(0, high - committed))
                seen.add((self.name, tp.topic, tp.partition))
        for key in [k for k in _lag if k[0] == self.name and k not in seen]:
            del _lag[key]  # partitions now owned by another member report there

    async def _purge(self) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "DELETE FROM processed_events WHERE consumer = %s "
                "AND processed_at < now() - make_interval(hours => %s)",
                (self.name, self.retention_hours),
            )


class _Stopping(Exception):  # noqa: N818
    pass


def _received(message: Message) -> ReceivedEvent:
    """The message as an event; DecodeError or ValueError if it is not an envelope with a
    UUID event id (poison)."""
    envelope = EventEnvelope.FromString(message.value() or b"")
    event = ReceivedEvent(envelope, message.topic() or "", message.partition() or 0, message.offset() or 0)
    event.event_id  # noqa: B018 - a valid UUID, or the message is poison
    return event


def _position(message: Message) -> tuple[str, int]:
    return (message.topic() or "", message.partition() or 0)


_registered = False


def register_metrics() -> None:
    global _registered
    if _registered:
        return
    _registered = True

    def lag() -> Iterable[tuple[list[str], float]]:
        return [([c, t, str(p)], v) for (c, t, p), v in list(_lag.items())]

    metrics.register_gauge(
        "interpay_consumer_lag_messages",
        "Messages not yet processed (high watermark minus committed offset), by consumer and partition",
        ["consumer", "topic", "partition"],
        lag,
    )
