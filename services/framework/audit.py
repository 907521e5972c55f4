"""The audit trail every service keeps: who changed which row of its database, from
where, and what the row was before and after.

PostgreSQL records it (services/framework/audit.sql): a row trigger on each table a
service attaches writes one `audit_trail` row per INSERT, UPDATE or DELETE, in the same
transaction, so no use case can forget it and no change can happen without it. The
trigger reads who and from where from the transaction's settings; this module supplies
them: `RpcInterceptor` remembers the call being served (services/framework/call.py), and
`Database.transaction()` of an audited database sets, for every transaction made while
serving a call,

- interpay.actor: the edge principal ('user:<id>', 'merchant:<id>', 'operator:<name>'),
  else the calling service ('service:<name>');
- interpay.via: the verified peer service that made the call ('gateway' for the edge);
- interpay.source_ip: the client's address (Envoy's x-envoy-external-address when the call
  came through the gateway, else the peer's address);
- interpay.user_agent, interpay.trace_id: the caller's user agent, the request's trace.

Work of a service's own jobs (no call) is recorded as 'system:<database role>'.

A service adopts the trail by copying audit.sql as a migration, attaching its state
tables with `audit_trail_attach(...)`, and passing `audited=True` to its Database. Its
outbox relay (services/framework/outbox.py) then also publishes the trail to Kafka
(`record_envelope` below), for the analytics copy in Cassandra.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2
from interpay.events.v1.audit_pb2 import AuditRecorded
from interpay.events.v1.envelope_pb2 import EventEnvelope

from services.framework import call
from services.framework.cassandra import Cassandra
from services.framework.edge_context import client_ip, forwarder
from services.framework.logs import current_trace_id
from services.framework.proto import timestamp

if TYPE_CHECKING:  # the consumer imports the database, which imports this module
    from services.framework.consumer import ReceivedEvent

AGGREGATE_TYPE = "audit"
USER_AGENT_MAX = 256
# Ids of published audit events: the same trail row always gives the same event id.
_EVENT_NAMESPACE = uuid.UUID("6f1d3c5e-27a4-4b8e-9a51-3c0e8d2f7b90")

SETTINGS_SQL = (
    "SELECT set_config('interpay.actor', %s, true), set_config('interpay.via', %s, true), "
    "set_config('interpay.source_ip', %s, true), set_config('interpay.user_agent', %s, true), "
    "set_config('interpay.trace_id', %s, true)"
)


def call_settings() -> tuple[str, str, str, str, str] | None:
    """(actor, via, source_ip, user_agent, trace_id) of the call being served, or None
    outside any call."""
    served = call.current()
    if served is None:
        return None
    if served.audit_settings is None:
        served.audit_settings = _settings_of(served)
    return served.audit_settings


def _settings_of(served: call.Call) -> tuple[str, str, str, str, str]:
    caller = served.caller
    via = caller.name if caller.verified else ""
    metadata = list(served.context.invocation_metadata() or ())
    ip = client_ip(metadata, served.context.peer() or "", forwarder(caller))
    agent = next((str(v) for k, v in metadata if k.lower() == "user-agent"), "")
    return served.actor, via, ip, agent[:USER_AGENT_MAX], current_trace_id()


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def record_envelope(service: str, row: Mapping[str, Any]) -> EventEnvelope:
    """The Kafka message of one audit_trail row: an AuditRecorded in an envelope whose
    aggregate is the changed row, so one row's history stays in order."""
    occurred_at: datetime = row["occurred_at"]
    record = AuditRecorded(
        service=service,
        audit_id=row["audit_id"],
        occurred_at=timestamp(occurred_at),
        table_name=row["table_name"],
        entity_id=row["entity_id"],
        operation=row["operation"],
        actor=row["actor"],
        via=row["via"],
        source_ip=str(row["source_ip"] or ""),
        user_agent=row["user_agent"],
        trace_id=row["trace_id"],
        before_json=_json(row["before"]),
        after_json=_json(row["after"]),
    )
    payload = any_pb2.Any()
    payload.Pack(record)
    return EventEnvelope(
        event_id=str(uuid.uuid5(_EVENT_NAMESPACE, f"{service}:{row['audit_id']}")),
        event_type=AuditRecorded.DESCRIPTOR.full_name,
        aggregate_type=AGGREGATE_TYPE,
        aggregate_id=f"{row['table_name']}:{row['entity_id']}",
        aggregate_version=row["audit_id"],
        occurred_at=timestamp(occurred_at),
        producer=service,
        payload=payload,
    )


# -- the analytics copy -----------------------------------------------------------------
AUDIT_EVENT = (
    "INSERT INTO audit_events (service, day, event_time, audit_id, actor_type, actor_id, action, "
    "entity_type, entity_id, old_values, new_values, ip_address, user_agent, status, trace_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
AUDIT_EVENT_BY_ENTITY = (
    "INSERT INTO audit_events_by_entity (entity_type, entity_id, day, event_time, audit_id, service, "
    "action, actor_type, actor_id, status, trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _state(after_json: str) -> str:
    """The row's state after the change, if it has one (most state tables do)."""
    if not after_json:
        return "DELETED"
    image = json.loads(after_json)
    value = image.get("state") or image.get("status") if isinstance(image, dict) else None
    return str(value) if value else ""


class AuditSink:
    """A consumer handler (services/framework/consumer.py) that copies every service's
    audit trail from `interpay.events.v1.audit` into Cassandra: `audit_events` (by service
    and day, newest first) and `audit_events_by_entity` (by row and day). Both rows are
    keyed by the event's id, which is derived from the trail row, so writing an event
    twice leaves the same rows; the two single-partition inserts go out at once, never as a
    batch. A Cassandra outage raises `CassandraUnavailable` (transient): the consumer
    waits and retries, so nothing is skipped."""

    def __init__(self, cassandra: Cassandra) -> None:
        self.cassandra = cassandra

    @staticmethod
    def statements() -> dict[str, str]:
        return {"AUDIT_EVENT": AUDIT_EVENT, "AUDIT_EVENT_BY_ENTITY": AUDIT_EVENT_BY_ENTITY}

    async def __call__(self, conn: Any, event: ReceivedEvent) -> None:
        envelope = event.envelope
        record = AuditRecorded()
        if envelope.payload.TypeName() != AuditRecorded.DESCRIPTOR.full_name or not envelope.payload.Unpack(
            record
        ):
            raise ValueError(f"{envelope.event_type} does not carry an AuditRecorded")  # poison
        at = record.occurred_at.ToDatetime(tzinfo=UTC)
        audit_id = uuid.UUID(envelope.event_id)
        actor_type, _, actor_id = record.actor.partition(":")
        action = f"{record.table_name}.{record.operation}"
        status = _state(record.after_json)
        ip = record.source_ip or None
        await self.cassandra.execute_concurrently(
            [
                (
                    "AUDIT_EVENT",
                    (
                        record.service,
                        at.date(),
                        at,
                        audit_id,
                        actor_type,
                        actor_id,
                        action,
                        record.table_name,
                        record.entity_id,
                        record.before_json,
                        record.after_json,
                        ip,
                        record.user_agent,
                        status,
                        record.trace_id,
                    ),
                ),
                (
                    "AUDIT_EVENT_BY_ENTITY",
                    (
                        record.table_name,
                        record.entity_id,
                        at.date(),
                        at,
                        audit_id,
                        record.service,
                        action,
                        actor_type,
                        actor_id,
                        status,
                        record.trace_id,
                    ),
                ),
            ]
        )
