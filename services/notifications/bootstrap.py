"""The notifications service's composition root: a Kafka consumer of the payment events
making notifications and webhook deliveries, a periodic sender of the deliveries, the
RPCs that read them, and the consumer copying every service's audit trail to Cassandra."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from interpay.merchants.v1.merchants_service_pb2_grpc import MerchantsServiceStub

from services.framework import audit
from services.framework.audit import AuditSink
from services.framework.cassandra import Cassandra
from services.framework.config import ServiceConfig, integer
from services.framework.consumer import EventConsumer
from services.framework.db import Database
from services.framework.outbox import Relay, topic_for
from services.framework.peers import Peers
from services.framework.periodic import Periodic
from services.framework.server import run
from services.notifications.adapters.http import WebhookClient
from services.notifications.domain.webhooks import RetryPolicy
from services.notifications.entrypoints.grpc_api import NotificationsServicer
from services.notifications.service_layer.deliveries import Deliveries, Notifications
from services.notifications.service_layer.events import TOPICS, EventHandler

MIGRATIONS = Path(__file__).parent / "migrations"
CONSUMER_GROUP = "notifications"
AUDIT_SINK_GROUP = "audit-sink"


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max, audited=True)
    peers = Peers(config.peer_addresses, config.peer_deadline_seconds, config.tls)
    merchants = peers.stub("merchants", MerchantsServiceStub)
    policy = RetryPolicy(
        base=timedelta(milliseconds=integer("INTERPAY_WEBHOOK_BACKOFF_BASE_MS", 30_000)),
        cap=timedelta(milliseconds=integer("INTERPAY_WEBHOOK_BACKOFF_MAX_MS", 3_600_000)),
        window=timedelta(seconds=integer("INTERPAY_WEBHOOK_RETRY_WINDOW_SECONDS", 24 * 3600)),
        max_attempts=integer("INTERPAY_WEBHOOK_MAX_ATTEMPTS", 50),
    )
    client = WebhookClient(
        timeout_seconds=float(integer("INTERPAY_WEBHOOK_TIMEOUT_SECONDS", 10)),
        loopback_only=integer("INTERPAY_WEBHOOK_LOOPBACK_ONLY", 0) == 1,
    )
    deliveries = Deliveries(db, merchants, client, policy)
    consumer = EventConsumer(db, CONSUMER_GROUP, TOPICS, EventHandler(merchants))
    sender = Periodic("send-webhooks", integer("INTERPAY_WEBHOOK_POLL_MS", 250) / 1000, deliveries.send_due)
    # Every service's audit trail, copied from Kafka into Cassandra for analytics
    # (services/framework/audit.py, AuditSink).
    cassandra = Cassandra(AuditSink.statements())
    audit_sink = EventConsumer(
        db, AUDIT_SINK_GROUP, (topic_for(audit.AGGREGATE_TYPE),), AuditSink(cassandra), ordered=False
    )
    # The audit trail of notifications and deliveries, published to Kafka (framework/audit.py).
    relay = Relay(db, "notifications")
    return NotificationsServicer(Notifications(db), deliveries), [
        db,
        relay,
        peers,
        consumer,
        sender,
        cassandra,
        audit_sink,
    ]


def main() -> None:
    run("notifications", build)  # type: ignore[arg-type]
