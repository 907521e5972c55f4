"""Sending webhook deliveries, and the queries and redelivery behind the RPCs.

A periodic job (`send_due`) leases the deliveries whose attempt is due, reads their
endpoints' current URL and signing secret from the merchants service, signs and POSTs
each one, and records the attempt and what comes next in one transaction: DELIVERED on a
2xx, otherwise RETRYING at a jittered exponential backoff, or FAILED once the round's
24 hours (or its attempts) are spent. Every attempt is a row of `webhook_attempts`. A
sender that dies mid-attempt leaves the lease to run out; the attempt is then made again
(delivery is at least once; merchants deduplicate on InterPay-Event-Id).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime

from interpay.merchants.v1 import merchants_service_pb2 as merchants_pb
from interpay.merchants.v1.merchants_service_pb2_grpc import MerchantsServiceStub

from services.framework import paging
from services.framework.db import Database
from services.framework.errors import FailedPrecondition, NotFound
from services.notifications.adapters.http import Outcome, WebhookClient
from services.notifications.adapters.repository import NotificationRepository, Row
from services.notifications.domain.webhooks import RetryPolicy, signature_header

log = logging.getLogger("interpay.notifications.webhooks")


class DeliveryNotFound(NotFound):
    def __init__(self, delivery_id: uuid.UUID) -> None:
        super().__init__(
            f"webhook delivery {delivery_id} does not exist", metadata={"delivery_id": str(delivery_id)}
        )


class NotificationNotFound(NotFound):
    default_reason = "NOTIFICATION_NOT_FOUND"

    def __init__(self, notification_id: uuid.UUID) -> None:
        super().__init__(
            f"notification {notification_id} does not exist",
            metadata={"notification_id": str(notification_id)},
        )


class Deliveries:
    def __init__(
        self,
        db: Database,
        merchants: MerchantsServiceStub,
        client: WebhookClient,
        policy: RetryPolicy,
        batch_size: int = 20,
    ) -> None:
        self.db = db
        self.merchants = merchants
        self.client = client
        self.policy = policy
        self.batch_size = batch_size

    # -- sending --------------------------------------------------------------------------
    async def send_due(self) -> int:
        async with self.db.transaction() as conn:
            due = await NotificationRepository(conn).claim_due(self.batch_size, self.client.timeout + 30)
        if not due:
            return 0
        endpoints: dict[uuid.UUID, dict[str, merchants_pb.WebhookEndpointForDelivery]] = {}
        for merchant_id in {d["merchant_id"] for d in due}:
            reply = await self.merchants.ListWebhookEndpointsForDelivery(
                merchants_pb.ListWebhookEndpointsForDeliveryRequest(merchant_id=str(merchant_id))
            )  # if the merchants service is down, the leases run out and the job tries again
            endpoints[merchant_id] = {e.webhook_endpoint.endpoint_id: e for e in reply.endpoints}
        await asyncio.gather(
            *(self._attempt(d, endpoints[d["merchant_id"]].get(str(d["endpoint_id"]))) for d in due)
        )
        return len(due)

    async def _attempt(self, delivery: Row, endpoint: merchants_pb.WebhookEndpointForDelivery | None) -> None:
        attempted_at = datetime.now(UTC)
        if endpoint is None:
            outcome = Outcome(0, "the endpoint was deleted", 0)
            url = delivery["endpoint_url"]
        else:
            url = endpoint.webhook_endpoint.url
            body = bytes(delivery["body"])
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "InterPay-Webhooks/1",
                "InterPay-Event-Id": str(delivery["event_id"]),
                "InterPay-Event-Type": delivery["event_type"],
                "InterPay-Delivery-Id": str(delivery["delivery_id"]),
                "InterPay-Signature": signature_header(endpoint.signing_secret, int(time.time()), body),
            }
            outcome = await self.client.post(url, body, headers)
        if outcome.delivered:
            state, next_at = "DELIVERED", None
        elif endpoint is None:
            state, next_at = "FAILED", None
        else:
            next_at = self.policy.next_attempt(
                delivery["round_started_at"], delivery["round_attempts"] + 1, datetime.now(UTC)
            )
            state = "RETRYING" if next_at is not None else "FAILED"
        async with self.db.transaction() as conn:
            await NotificationRepository(conn).record_attempt(
                delivery,
                attempted_at,
                outcome.status,
                outcome.duration_ms,
                outcome.error,
                url,
                state,
                next_at,
            )
        log.info(
            "webhook attempt",
            extra={
                "delivery_id": str(delivery["delivery_id"]),
                "event_id": str(delivery["event_id"]),
                "status": outcome.status,
                "error": outcome.error,
                "state": state,
            },
        )

    # -- RPCs -----------------------------------------------------------------------------
    async def get(self, delivery_id: uuid.UUID) -> tuple[Row, list[Row]]:
        async with self.db.transaction() as conn:
            repo = NotificationRepository(conn)
            delivery = await repo.get_delivery(delivery_id)
            if delivery is None:
                raise DeliveryNotFound(delivery_id)
            attempts = await repo.attempts([delivery_id])
        return delivery, attempts[delivery_id]

    async def list_deliveries(
        self,
        merchant_id: uuid.UUID,
        state: str | None,
        event_type: str | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[tuple[Row, list[Row]]], str]:
        cursor = paging.decode(page_token)
        size = paging.page_size(page_size)
        async with self.db.transaction() as conn:
            repo = NotificationRepository(conn)
            rows = await repo.list_deliveries(
                merchant_id,
                state,
                event_type,
                size + 1,
                (cursor[0], cursor[1]) if cursor and len(cursor) == 2 else None,
            )
            token = ""
            if len(rows) > size:
                rows = rows[:size]
                token = paging.encode([rows[-1]["created_at"].isoformat(), str(rows[-1]["delivery_id"])])
            attempts = await repo.attempts([r["delivery_id"] for r in rows])
        return [(r, attempts[r["delivery_id"]]) for r in rows], token

    async def redeliver(self, delivery_id: uuid.UUID) -> tuple[Row, list[Row]]:
        async with self.db.transaction() as conn:
            repo = NotificationRepository(conn)
            delivery = await repo.get_delivery(delivery_id, lock=True)
            if delivery is None:
                raise DeliveryNotFound(delivery_id)
            if delivery["state"] in ("PENDING", "RETRYING"):
                raise FailedPrecondition(
                    f"webhook delivery {delivery_id} is {delivery['state']}: an attempt is already scheduled",
                    reason="INVALID_STATE",
                    metadata={"delivery_id": str(delivery_id), "state": delivery["state"]},
                )
            await repo.redeliver(delivery_id)
        return await self.get(delivery_id)


class Notifications:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, notification_id: uuid.UUID) -> Row:
        async with self.db.transaction() as conn:
            row = await NotificationRepository(conn).get_notification(notification_id)
        if row is None:
            raise NotificationNotFound(notification_id)
        return row

    async def list_notifications(
        self, user_id: uuid.UUID, channel: str | None, state: str | None, page_size: int, page_token: str
    ) -> tuple[list[Row], str]:
        cursor = paging.decode(page_token)
        size = paging.page_size(page_size)
        async with self.db.transaction() as conn:
            rows = await NotificationRepository(conn).list_notifications(
                user_id,
                channel,
                state,
                size + 1,
                (cursor[0], cursor[1]) if cursor and len(cursor) == 2 else None,
            )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = paging.encode([rows[-1]["created_at"].isoformat(), str(rows[-1]["notification_id"])])
        return rows, token
