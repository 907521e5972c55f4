"""From domain events to notifications and webhook deliveries.

`EventHandler` is the consumer's handler (services/framework/consumer.py): it runs inside
the transaction that also records the event as processed, so each event makes its
notification and its deliveries exactly once. It only stores: webhooks are sent later by
`Deliveries.send_due` (service_layer/deliveries.py), from the stored schedule.

Topics: `interpay.events.v1.payment` (payer notifications, merchant webhooks),
`interpay.events.v1.refund` (the same, for refunds), `interpay.events.v1.wallet`
(transfer notifications to the wallets' owners) and `interpay.events.v1.payout` (a
payout's outcome, to the owner of the wallet it came from).

A refund event names its payment only; its payer and merchant are learnt from the
payment's events (`payment_parties`). Kafka orders the events of one topic's partition,
not those of two topics, so a refund event may be read before any event of its payment.
It then waits in `pending_refund_events` (recorded as processed: its effect is to wait)
and is applied in the transaction that learns the payment, in arrival order. Waiting
inside the consumer instead (a transient error, retried) would stall it: one consumer
reads all four topics, so the payment event the refund waits for would never be read.
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
from interpay.transfers.v1 import transfers_service_pb2 as transfers_pb
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb

from services.framework.consumer import ReceivedEvent
from services.framework.outbox import topic_for
from services.notifications.adapters.repository import PAYOUT, REFUND, NotificationRepository
from services.notifications.domain import templates

TOPICS = (topic_for("payment"), topic_for("refund"), topic_for("wallet"), topic_for("payout"))


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


async def notify(
    repo: NotificationRepository,
    user_id: uuid.UUID,
    rendered: templates.Rendered | None,
    envelope: EventEnvelope,
    now: datetime,
) -> None:
    """The user's in-app notification of an event, if the event has something to say."""
    if rendered is not None:
        await repo.add_notification(
            user_id,
            "IN_APP",
            rendered.template,
            uuid.UUID(envelope.event_id),
            envelope.event_type,
            rendered.title,
            rendered.body,
            now,
        )


class EventHandler:
    def __init__(self, merchants: MerchantsServiceStub) -> None:
        self.merchants = merchants

    async def __call__(self, conn: psycopg.AsyncConnection[Any], event: ReceivedEvent) -> None:
        envelope = event.envelope
        repo = NotificationRepository(conn)
        now = datetime.now(UTC)
        event_id = uuid.UUID(envelope.event_id)
        if envelope.aggregate_type == "wallet":
            await self._wallet(repo, envelope, now)
            return
        if envelope.aggregate_type == "refund":
            await self._refund(repo, envelope, event_id, now)
            return
        if envelope.aggregate_type == "payout":
            await self._payout(repo, envelope, now)
            return
        if envelope.aggregate_type != "payment":
            return  # nothing to say about it
        payment: payments_pb.Payment = unpack(envelope, payments_pb.Payment)
        rendered = templates.for_payment(envelope.event_type, payment)
        if payment.payer_user_id:
            await notify(repo, uuid.UUID(payment.payer_user_id), rendered, envelope, now)
        await self._deliveries(repo, envelope, payment.merchant_id, payment, now)
        await self._learn_payment(repo, payment, now)

    # -- refunds --------------------------------------------------------------------------
    async def _learn_payment(
        self, repo: NotificationRepository, payment: payments_pb.Payment, now: datetime
    ) -> None:
        """Remembers the payment's payer and merchant (the first of its events does), and
        applies the refund events that were waiting for them."""
        payment_id = uuid.UUID(payment.payment_id)
        await repo.lock_party(REFUND, payment_id)
        payer = uuid.UUID(payment.payer_user_id) if payment.payer_user_id else None
        label = templates.payment_label(payment)
        if not await repo.learn_payment(payment_id, uuid.UUID(payment.merchant_id), payer, label):
            return
        for waited in await repo.release_events(REFUND, payment_id):
            refund: payments_pb.Refund = unpack(waited, payments_pb.Refund)
            parties = {"merchant_id": payment.merchant_id, "payer_user_id": payer, "label": label}
            await self._apply_refund(repo, waited, refund, parties, now)

    async def _refund(
        self, repo: NotificationRepository, envelope: EventEnvelope, event_id: uuid.UUID, now: datetime
    ) -> None:
        refund: payments_pb.Refund = unpack(envelope, payments_pb.Refund)
        payment_id = uuid.UUID(refund.payment_id)
        await repo.lock_party(REFUND, payment_id)
        parties = await repo.payment_parties(payment_id)
        if parties is None:
            await repo.hold_event(REFUND, event_id, payment_id, envelope.SerializeToString())
            return
        await self._apply_refund(repo, envelope, refund, parties, now)

    async def _apply_refund(
        self,
        repo: NotificationRepository,
        envelope: EventEnvelope,
        refund: payments_pb.Refund,
        parties: dict[str, Any],
        now: datetime,
    ) -> None:
        """The payer's notification (a refund done or failed) and the merchant's webhooks."""
        rendered = templates.for_refund(envelope.event_type, refund, parties["label"])
        if parties["payer_user_id"] is not None:
            await notify(repo, parties["payer_user_id"], rendered, envelope, now)
        await self._deliveries(repo, envelope, str(parties["merchant_id"]), refund, now)

    async def _wallet(self, repo: NotificationRepository, envelope: EventEnvelope, now: datetime) -> None:
        """Transfers, told to the users whose wallets they moved. A wallet's events share
        its partition, in version order, so its WalletCreated (which names the owner) is
        always processed before any of its entries."""
        what = envelope.event_type.rsplit(".", 1)[-1]
        if what == "WalletCreated":
            wallet: wallet_pb.Wallet = unpack(envelope, wallet_pb.Wallet)
            wallet_id = uuid.UUID(wallet.wallet_id)
            owner = uuid.UUID(wallet.owner_id) if wallet.owner_type == wallet_pb.OWNER_TYPE_USER else None
            await repo.lock_party(PAYOUT, wallet_id)
            await repo.set_wallet_owner(wallet_id, owner)
            for waited in await repo.release_events(PAYOUT, wallet_id):  # released even if no one to tell
                if owner is not None:
                    payout: transfers_pb.Payout = unpack(waited, transfers_pb.Payout)
                    await notify(repo, owner, templates.for_payout(waited.event_type, payout), waited, now)
            return
        if what not in ("FundsCredited", "FundsDebited"):
            return
        entry: wallet_pb.WalletTransaction = unpack(envelope, wallet_pb.WalletTransaction)
        rendered = templates.for_wallet_entry(envelope.event_type, entry)
        owner = await repo.wallet_owner(uuid.UUID(entry.wallet_id)) if rendered else None
        if owner is not None:
            await notify(repo, owner, rendered, envelope, now)

    async def _payout(self, repo: NotificationRepository, envelope: EventEnvelope, now: datetime) -> None:
        """A payout's outcome, told to the owner of the wallet it came from (no one, if no
        user owns it). The owner is learnt from the wallet's WalletCreated, on another topic:
        until that is read, the payout's event waits (`pending_payout_events`)."""
        payout: transfers_pb.Payout = unpack(envelope, transfers_pb.Payout)
        rendered = templates.for_payout(envelope.event_type, payout)
        if rendered is None:
            return
        wallet_id = uuid.UUID(payout.source_wallet_id)
        await repo.lock_party(PAYOUT, wallet_id)
        known, owner = await repo.known_wallet(wallet_id)
        if not known:
            event_id, raw = uuid.UUID(envelope.event_id), envelope.SerializeToString()
            await repo.hold_event(PAYOUT, event_id, wallet_id, raw)
        elif owner is not None:
            await notify(repo, owner, rendered, envelope, now)

    async def _deliveries(
        self,
        repo: NotificationRepository,
        envelope: EventEnvelope,
        merchant_id: str,
        payload: Message,
        now: datetime,
    ) -> None:
        """One delivery of the event (its `payload` as the JSON's data) per endpoint of the
        merchant subscribed to its type. A merchants service that cannot answer makes the
        consumer wait and retry (UNAVAILABLE is transient), so no delivery is silently
        skipped."""
        reply = await self.merchants.ListWebhookEndpointsForDelivery(
            merchants_pb.ListWebhookEndpointsForDeliveryRequest(merchant_id=merchant_id)
        )
        subscribed = [
            e.webhook_endpoint
            for e in reply.endpoints
            if envelope.event_type in e.webhook_endpoint.event_types
        ]
        if not subscribed:
            return
        body = webhook_body(envelope, payload)
        for endpoint in subscribed:
            await repo.add_delivery(
                uuid.UUID(merchant_id),
                uuid.UUID(endpoint.endpoint_id),
                endpoint.url,
                uuid.UUID(envelope.event_id),
                envelope.event_type,
                body,
                now,
            )
