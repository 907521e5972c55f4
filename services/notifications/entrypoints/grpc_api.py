"""The NotificationsService servicer: proto in -> use case -> proto out."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from interpay.notifications.v1 import notifications_service_pb2 as pb

from services.framework.proto import timestamp
from services.notifications.adapters.repository import Row
from services.notifications.service_layer.deliveries import Deliveries, Notifications


def notification_pb(r: Row) -> pb.Notification:
    out = pb.Notification(
        notification_id=str(r["notification_id"]),
        user_id=str(r["user_id"]),
        channel=pb.Channel.Value(f"CHANNEL_{r['channel']}"),
        template=r["template"],
        event_id=str(r["event_id"]),
        event_type=r["event_type"],
        title=r["title"],
        body=r["body"],
        masked_recipient=r["masked_recipient"],
        state=pb.Notification.State.Value(f"STATE_{r['state']}"),
        attempt_count=r["attempt_count"],
        failure_reason=r["failure_reason"],
        create_time=timestamp(r["created_at"]),
        update_time=timestamp(r["updated_at"]),
    )
    if r["sent_at"] is not None:
        out.send_time.CopyFrom(timestamp(r["sent_at"]))
    return out


def attempt_pb(a: Row) -> pb.WebhookAttempt:
    duration = Duration()
    duration.FromTimedelta(timedelta(milliseconds=a["duration_ms"]))
    return pb.WebhookAttempt(
        attempt_number=a["attempt_number"],
        attempt_time=timestamp(a["attempted_at"]),
        response_status_code=a["response_status_code"],
        duration=duration,
        error=a["error"],
        manual=a["manual"],
    )


def delivery_pb(d: Row, attempts: list[Row]) -> pb.WebhookDelivery:
    out = pb.WebhookDelivery(
        delivery_id=str(d["delivery_id"]),
        merchant_id=str(d["merchant_id"]),
        event_id=str(d["event_id"]),
        event_type=d["event_type"],
        endpoint_url=d["endpoint_url"],
        state=pb.WebhookDelivery.State.Value(f"STATE_{d['state']}"),
        attempts=[attempt_pb(a) for a in attempts],
        create_time=timestamp(d["created_at"]),
        update_time=timestamp(d["updated_at"]),
    )
    if d["state"] in ("PENDING", "RETRYING") and d["next_attempt_at"] is not None:
        out.next_attempt_time.CopyFrom(timestamp(d["next_attempt_at"]))
    return out


def _name(enum_name: str, prefix: str) -> str | None:
    return enum_name.removeprefix(prefix) if not enum_name.endswith("UNSPECIFIED") else None


class NotificationsServicer:
    def __init__(self, notifications: Notifications, deliveries: Deliveries) -> None:
        self.notifications = notifications
        self.deliveries = deliveries

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: Any
    ) -> pb.ListNotificationsResponse:
        rows, token = await self.notifications.list_notifications(
            uuid.UUID(request.user_id),
            _name(pb.Channel.Name(request.channel), "CHANNEL_"),
            _name(pb.Notification.State.Name(request.state), "STATE_"),
            request.page_size,
            request.page_token,
        )
        return pb.ListNotificationsResponse(
            notifications=[notification_pb(r) for r in rows], next_page_token=token
        )

    async def GetNotification(
        self, request: pb.GetNotificationRequest, context: Any
    ) -> pb.GetNotificationResponse:
        row = await self.notifications.get(uuid.UUID(request.notification_id))
        return pb.GetNotificationResponse(notification=notification_pb(row))

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Any
    ) -> pb.ListWebhookDeliveriesResponse:
        rows, token = await self.deliveries.list_deliveries(
            uuid.UUID(request.merchant_id),
            _name(pb.WebhookDelivery.State.Name(request.state), "STATE_"),
            request.event_type or None,
            request.page_size,
            request.page_token,
        )
        return pb.ListWebhookDeliveriesResponse(
            webhook_deliveries=[delivery_pb(d, a) for d, a in rows], next_page_token=token
        )

    async def GetWebhookDelivery(
        self, request: pb.GetWebhookDeliveryRequest, context: Any
    ) -> pb.GetWebhookDeliveryResponse:
        delivery, attempts = await self.deliveries.get(uuid.UUID(request.delivery_id))
        return pb.GetWebhookDeliveryResponse(webhook_delivery=delivery_pb(delivery, attempts))

    async def RedeliverWebhook(
        self, request: pb.RedeliverWebhookRequest, context: Any
    ) -> pb.RedeliverWebhookResponse:
        delivery, attempts = await self.deliveries.redeliver(uuid.UUID(request.delivery_id))
        return pb.RedeliverWebhookResponse(webhook_delivery=delivery_pb(delivery, attempts))
