"""From domain events to notifications and webhook deliveries.

`EventHandler` is the consumer's handler (services/framework/consumer.py): it runs inside
the transaction that also records the event as processed, so each event makes its
notification and its deliveries exactly once. It only stores: webhooks are sent later by
`Deliveries.send_due` (service_layer/deliveries.py), from the stored schedule.

Topics: `interpay.events.v1.payment` (payer notifications, merchant webhooks) and
`interpay.events.v1.wallet` (transfer notifications to the wallets' owners).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from google.protobuf import json_format
from google.protobuf.message import Message
from interpay.events.v1.envelope_pb2 import EventEnvelope
from interpay.merchants.v1 import merchants_service_pb2 as merchants_pb
from interpay.merchants.v1.merchants_service_pb2_grpc import MerchantsServiceStub
from interpay.payments.v1 import payments_service_pb2 as payments_pb
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb

from services.framework.consumer import ReceivedEvent
from services.framework.outbox import topic_for
from services.notifications.adapters.repository import NotificationRepository
from services.notifications.domain import templates

TOPICS = (topic_for("payment"), topic_for("wallet"))


class UnexpectedPayload(ValueError):
    """The event's payload is not the message its type promises: the event is poison."""


def unpack(envelope: EventEnvelope, cls: type[Message]) -> Any:
    message = cls()
    if envelope.payload.TypeName() != message.DESCRIPTOR.full_name or not envelope.payload.Unpack(message):
        raise UnexpectedPayload(
            f"{envelope.event_type} carries {envelope.payload.type_url!r}, not {cls.DESCRIPTOR.full_name}"
        )
    return message


def webhook_body(envelope: EventEnvelope, payload: Message) -> bytes:
    """The JSON a merchant receives; fixed once, so every attempt sends the same bytes."""
    document = {
        "id": envelope.event_id,
        "type": envelope.event_type,
        "created": envelope.occurred_at.ToJsonString(),
        "aggregate_type": envelope.aggregate_type,
        "aggregate_id": envelope.aggregate_id,
        "aggregate_version": envelope.aggregate_version,
        "data": json_format.MessageToDict(payload),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class EventHandler:
    def __init__(self, merchants: MerchantsServiceStub) -> None:
        self.merchants = merchants

    async def __call__(self, conn: psycopg.AsyncConnection[Any], event: ReceivedEvent) -> None:
        envelope = event.envelope
        repo = NotificationRepository(conn)
        now = datetime.now(UTC)
        event_id = uuid.UUID(envelope.event_id)
        if envelope.aggregate_type == "wallet":
            await self._wallet(repo, envelope, event_id, now)
            return
        if envelope.aggregate_type != "payment":
            return  # nothing to say about it
        payment: payments_pb.Payment = unpack(envelope, payments_pb.Payment)
        rendered = templates.for_payment(envelope.event_type, payment)
        if rendered is not None and payment.payer_user_id:
            await repo.add_notification(
                uuid.UUID(payment.payer_user_id),
                "IN_APP",
                rendered.template,
                event_id,
                envelope.event_type,
                rendered.title,
                rendered.body,
                now,
            )
        await self._deliveries(repo, envelope, payment, now)

    async def _wallet(
        self, repo: NotificationRepository, envelope: EventEnvelope, event_id: uuid.UUID, now: datetime
    ) -> None:
        """Transfers, told to the users whose wallets they moved. A wallet's events share
        its partition, in version order, so its WalletCreated (which names the owner) is
        always processed before any of its entries."""
        what = envelope.event_type.rsplit(".", 1)[-1]
        if what == "WalletCreated":
            wallet: wallet_pb.Wallet = unpack(envelope, wallet_pb.Wallet)
            if wallet.owner_type == wallet_pb.OWNER_TYPE_USER:
                await repo.set_wallet_owner(uuid.UUID(wallet.wallet_id), uuid.UUID(wallet.owner_id))
            return
        if what not in ("FundsCredited", "FundsDebited"):
            return
        entry: wallet_pb.WalletTransaction = unpack(envelope, wallet_pb.WalletTransaction)
        rendered = templates.for_wallet_entry(envelope.event_type, entry)
        owner = await repo.wallet_owner(uuid.UUID(entry.wallet_id)) if rendered else None
        if rendered is not None and owner is not None:
            await repo.add_notification(
                owner,
                "IN_APP",
                rendered.template,
                event_id,
                envelope.event_type,
                rendered.title,
                rendered.body,
                now,
            )

    async def _deliveries(
        self,
        repo: NotificationRepository,
        envelope: EventEnvelope,
        payment: payments_pb.Payment,
        now: datetime,
    ) -> None:
        """One delivery per endpoint of the merchant subscribed to the event's type. A
        merchants service that cannot answer makes the consumer wait and retry (UNAVAILABLE
        is transient), so no delivery is silently skipped."""
        reply = await self.merchants.ListWebhookEndpointsForDelivery(
            merchants_pb.ListWebhookEndpointsForDeliveryRequest(merchant_id=payment.merchant_id)
        )
        subscribed = [
            e.webhook_endpoint
            for e in reply.endpoints
            if envelope.event_type in e.webhook_endpoint.event_types
        ]
        if not subscribed:
            return
        body = webhook_body(envelope, payment)
        for endpoint in subscribed:
            await repo.add_delivery(
                uuid.UUID(payment.merchant_id),
                uuid.UUID(endpoint.endpoint_id),
                endpoint.url,
                uuid.UUID(envelope.event_id),
                envelope.event_type,
                body,
                now,
            )
