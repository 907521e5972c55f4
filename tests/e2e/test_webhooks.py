"""Payment events end to end: a payment through Envoy becomes events in the payments
outbox, Kafka, the notifications consumer, a user notification and a signed webhook POSTed
to a receiver on loopback started by the test, which verifies the signature exactly as
services/notifications/README.md tells a merchant to. A receiver that fails the first
attempts is retried with backoff until it answers 2xx, every attempt logged;
RedeliverWebhook sends a delivered event again. Finally every topic is scanned for the
card numbers, CVVs and secrets these tests used."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from interpay.events.v1.envelope_pb2 import EventEnvelope
from interpay.merchants.v1 import merchants_service_pb2 as merchants_pb
from interpay.merchants.v1.merchants_service_pb2_grpc import MerchantsServiceStub
from interpay.notifications.v1 import notifications_service_pb2 as pb
from interpay.notifications.v1.notifications_service_pb2_grpc import NotificationsServiceStub
from interpay.payments.v1 import payments_service_pb2  # noqa: F401 - payload types for JSON
from interpay.wallet.v1 import wallet_service_pb2  # noqa: F401

from services.framework.topology import Profile
from services.notifications.domain.webhooks import verify as reference_verify
from tests.conftest import ROOT, database_url
from tests.e2e.test_card_payments import pay_by_card, tokenize
from tests.e2e.test_edge_auth import PASSWORD, User, api_key
from tests.e2e.test_payments_flow import CUR, create_merchant, payer
from tests.e2e.test_transfers_payouts import payout_body, user_wallet
from tests.helpers import rpc_details
from tests.integration.test_consumers_notifications import bootstrap, poll

CAPTURED = "interpay.payments.v1.PaymentCaptured"
REFUNDED = "interpay.payments.v1.PaymentPartiallyRefunded"
REFUND_SUCCEEDED = "interpay.payments.v1.RefundSucceeded"
TEST_CVV = "913"
PAYOUT_IBAN = "GB29NWBK60161331926819"  # a valid example IBAN (ISO 13616)


def fresh_pan() -> str:
    """A Luhn-valid Visa number never seen before (the simulator approves it, and the fraud
    rules' card velocity has no history for it)."""
    body = "4" + "".join(secrets.choice("0123456789") for _ in range(14))
    total = 0
    for i, digit in enumerate(int(d) for d in reversed(body)):
        doubled = digit * 2 if i % 2 == 0 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return body + str((10 - total % 10) % 10)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """A webhook endpoint on loopback: answers `fail_first` requests with 503, then 200."""

    fail_first: int = 0
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def for_event(self, event_type: str, payment_id: str) -> list[Received]:
        with self.lock:
            return [
                r
                for r in self.requests
                if r.headers.get("interpay-event-type") == event_type
                and json.loads(r.body)["data"]["paymentId"] == payment_id
            ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                code = 503 if len(state.requests) < state.fail_first else 200
                state.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body, code))
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/interpay"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def verify(header: str, body: bytes, secret: str, tolerance: int = 300) -> bool:
    """The merchant's check, written from the README's description (not the service's code)."""
    items = [part.split("=", 1) for part in header.split(",")]
    t = int(next(v for k, v in items if k == "t"))
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - t) <= tolerance
    return fresh and any(hmac.compare_digest(expected, v) for k, v in items if k == "v1")


def readme_verify() -> Any:
    """The Python verification snippet of services/notifications/README.md, as published."""
    readme = (ROOT / "services" / "notifications" / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # noqa: S102 - our own documentation, under test
    return namespace["verify"]


def endpoint(gateway: httpx.Client, merchant_id: str, url: str, event_types: list[str]) -> str:
    reply = gateway.post(
        f"/v1/merchants/{merchant_id}/webhookEndpoints",
        json={"url": url, "eventTypes": event_types, "description": "test receiver"},
    )
    assert reply.status_code == 200, reply.text
    secret = reply.json()["signingSecret"]
    assert secret
    return secret  # type: ignore[no-any-return]


def wallet_payment(gateway: httpx.Client, merchant_id: str, user_id: str, amount: int) -> dict[str, Any]:
    reply = gateway.post(
        "/v1/payments",
        headers={"Idempotency-Key": str(uuid.uuid4())},
        json={
            "merchantId": merchant_id,
            "payerWalletId": payer(gateway, 10_000),
            "payerUserId": user_id,
            "amount": {"amountMinor": str(amount), "currency": CUR},
            "description": "order 99",
        },
    )
    assert reply.status_code == 200, reply.text
    payment = reply.json()["payment"]
    assert payment["state"] == "STATE_CAPTURED"
    return payment  # type: ignore[no-any-return]


@pytest.fixture
def notifications(channel) -> NotificationsServiceStub:  # type: ignore[no-untyped-def]
    return NotificationsServiceStub(channel("notifications"))


def deliveries(stub: NotificationsServiceStub, merchant_id: str) -> list[pb.WebhookDelivery]:
    reply = stub.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(merchant_id=merchant_id), timeout=10)
    return list(reply.webhook_deliveries)


def test_a_payment_notifies_its_payer_and_sends_a_signed_webhook(  # type: ignore[no-untyped-def]
    gateway, notifications, receiver
) -> None:
    shop = create_merchant(gateway)
    secret = endpoint(gateway, shop["merchantId"], receiver.url, [CAPTURED])
    user = str(uuid.uuid4())
    payment = wallet_payment(gateway, shop["merchantId"], user, 2_599)

    [hook] = poll(lambda: receiver.for_event(CAPTURED, payment["paymentId"]), 60, "the webhook")
    assert verify(hook.headers["interpay-signature"], hook.body, secret)
    assert not verify(hook.headers["interpay-signature"], hook.body + b" ", secret)  # body tampered
    assert not verify(hook.headers["interpay-signature"], hook.body, secret + "x")  # wrong secret
    assert reference_verify(hook.headers["interpay-signature"], hook.body, secret, int(time.time()))
    assert readme_verify()(hook.headers["interpay-signature"], hook.body, secret)  # the documented snippet
    document = json.loads(hook.body)
    assert document["type"] == CAPTURED and document["id"] == hook.headers["interpay-event-id"]
    assert document["data"]["capturedAmount"] == {"amountMinor": "2599", "currency": CUR}
    assert document["data"]["merchantId"] == shop["merchantId"]

    # The payer's notification, through the public RPCs.
    listed = poll(
        lambda: (
            notifications.ListNotifications(
                pb.ListNotificationsRequest(user_id=user), timeout=10
            ).notifications
        ),
        30,
        "the payer's notification",
    )
    [note] = listed
    assert note.template == "payment_captured" and note.event_type == CAPTURED
    assert note.event_id == document["id"] and "25.99 EUR" in note.body
    assert note.channel == pb.CHANNEL_IN_APP and note.state == pb.Notification.STATE_SENT
    got = notifications.GetNotification(pb.GetNotificationRequest(notification_id=note.notification_id))
    assert got.notification == note

    # Only the subscribed event type was delivered, once, and its one attempt is logged.
    [delivery] = poll(
        lambda: [d for d in deliveries(notifications, shop["merchantId"]) if d.state == d.STATE_DELIVERED],
        30,
        "the delivery recorded as delivered",
    )
    assert delivery.event_id == document["id"] and delivery.endpoint_url == receiver.url
    assert [(a.attempt_number, a.response_status_code, a.error, a.manual) for a in delivery.attempts] == [
        (1, 200, "", False)
    ]
    assert {r.headers["interpay-event-type"] for r in receiver.requests} == {CAPTURED}

    # A manual redelivery sends the same event again, freshly signed, logged as manual.
    again = notifications.RedeliverWebhook(pb.RedeliverWebhookRequest(delivery_id=delivery.delivery_id))
    assert again.webhook_delivery.state == pb.WebhookDelivery.STATE_PENDING
    second = poll(
        lambda: (hooks := receiver.for_event(CAPTURED, payment["paymentId"]))[1:] and hooks[1],
        30,
        "redelivery",
    )
    assert second.body == hook.body and verify(second.headers["interpay-signature"], second.body, secret)
    final = poll(
        lambda: (
            (
                d := notifications.GetWebhookDelivery(
                    pb.GetWebhookDeliveryRequest(delivery_id=delivery.delivery_id)
                ).webhook_delivery
            ).state
            == d.STATE_DELIVERED
            and len(d.attempts) == 2
            and d
        ),
        30,
        "the redelivery logged",
    )
    assert [(a.attempt_number, a.manual) for a in final.attempts] == [(1, False), (2, True)]


def test_a_failing_receiver_is_retried_with_backoff_until_it_succeeds(  # type: ignore[no-untyped-def]
    gateway, notifications, receiver
) -> None:
    receiver.fail_first = 3
    shop = create_merchant(gateway)
    secret = endpoint(gateway, shop["merchantId"], receiver.url, [CAPTURED, REFUNDED])
    payment = wallet_payment(gateway, shop["merchantId"], str(uuid.uuid4()), 4_000)

    hooks = poll(
        lambda: (h := receiver.for_event(CAPTURED, payment["paymentId"]))[3:] and h, 90, "4 attempts"
    )
    assert [h.answered for h in hooks] == [503, 503, 503, 200]
    assert len({h.headers["interpay-event-id"] for h in hooks}) == 1 and len({h.body for h in hooks}) == 1
    assert all(verify(h.headers["interpay-signature"], h.body, secret) for h in hooks)
    delivery = poll(
        lambda: [d for d in deliveries(notifications, shop["merchantId"]) if d.state == d.STATE_DELIVERED],
        30,
        "delivered",
    )[0]
    attempts = list(delivery.attempts)
    assert [(a.attempt_number, a.response_status_code) for a in attempts] == [
        (1, 503),
        (2, 503),
        (3, 503),
        (4, 200),
    ]
    assert [a.error for a in attempts] == ["HTTP 503"] * 3 + [""]
    gaps = [
        attempts[i + 1].attempt_time.ToDatetime() - attempts[i].attempt_time.ToDatetime() for i in range(3)
    ]
    assert all(g.total_seconds() > 0 for g in gaps)  # spaced out by the schedule, not sent at once

    # A partial refund moves the payment again: its event goes out to the same endpoint.
    refund = gateway.post(
        f"/v1/payments/{payment['paymentId']}/refunds",
        headers={"Idempotency-Key": str(uuid.uuid4())},
        json={"amount": {"amountMinor": "1000", "currency": CUR}, "reason": "damaged"},
    )
    assert refund.status_code == 200, refund.text
    [refunded] = poll(lambda: receiver.for_event(REFUNDED, payment["paymentId"]), 60, "the refund webhook")
    assert json.loads(refunded.body)["data"]["refundedAmount"] == {"amountMinor": "1000", "currency": CUR}


def test_a_refund_notifies_its_payer_and_sends_a_signed_webhook_once(  # type: ignore[no-untyped-def]
    gateway, notifications, receiver
) -> None:
    """A refund through the API: its RefundSucceeded event (topic interpay.events.v1.refund)
    becomes the payer's notification (the payer learnt from the payment's events) and one
    signed delivery to the merchant's endpoint subscribed to that type."""
    shop = create_merchant(gateway)
    secret = endpoint(gateway, shop["merchantId"], receiver.url, [REFUND_SUCCEEDED])
    user = str(uuid.uuid4())
    payment = wallet_payment(gateway, shop["merchantId"], user, 3_000)
    reply = gateway.post(
        f"/v1/payments/{payment['paymentId']}/refunds",
        headers={"Idempotency-Key": str(uuid.uuid4())},
        json={"amount": {"amountMinor": "1200", "currency": CUR}, "reason": "damaged"},
    )
    assert reply.status_code == 200, reply.text
    refund = reply.json()["refund"]
    assert refund["state"] == "STATE_SUCCEEDED"

    [hook] = poll(
        lambda: receiver.for_event(REFUND_SUCCEEDED, payment["paymentId"]), 60, "the refund webhook"
    )
    assert verify(hook.headers["interpay-signature"], hook.body, secret)
    document = json.loads(hook.body)
    assert document["type"] == REFUND_SUCCEEDED and document["aggregate_type"] == "refund"
    assert document["aggregate_id"] == refund["refundId"] and document["aggregate_version"] == 2
    assert document["data"]["refundId"] == refund["refundId"]
    assert document["data"]["amount"] == {"amountMinor": "1200", "currency": CUR}
    assert document["data"]["state"] == "STATE_SUCCEEDED"

    # The payer hears of the payment and of the refund, once each (the payment's own
    # PaymentPartiallyRefunded is no second refund notification).
    def payers() -> list[pb.Notification]:
        reply = notifications.ListNotifications(pb.ListNotificationsRequest(user_id=user), timeout=10)
        return list(reply.notifications)

    def once_refund_told() -> list[pb.Notification]:
        found = payers()
        return found if any(n.template == "refund_succeeded" for n in found) else []

    listed = poll(once_refund_told, 60, "the payer's refund notification")
    assert sorted(n.template for n in listed) == ["payment_captured", "refund_succeeded"]
    [note] = [n for n in listed if n.template == "refund_succeeded"]
    assert note.event_type == REFUND_SUCCEEDED and note.event_id == document["id"]
    assert "12.00 EUR of your payment for order 99" in note.body

    # Exactly one delivery (the endpoint takes RefundSucceeded only), delivered once.
    [delivery] = poll(
        lambda: [d for d in deliveries(notifications, shop["merchantId"]) if d.state == d.STATE_DELIVERED],
        30,
        "the refund delivery recorded as delivered",
    )
    assert (delivery.event_id, delivery.event_type) == (document["id"], REFUND_SUCCEEDED)
    assert [(a.attempt_number, a.response_status_code) for a in delivery.attempts] == [(1, 200)]
    assert len(deliveries(notifications, shop["merchantId"])) == 1
    assert [r.headers["interpay-event-id"] for r in receiver.requests] == [document["id"]]
    assert payers() == listed


def test_redelivering_an_unknown_or_scheduled_delivery_is_refused(notifications) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        notifications.RedeliverWebhook(pb.RedeliverWebhookRequest(delivery_id=str(uuid.uuid4())))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info, _ = rpc_details(caught.value)
    assert info is not None and info.reason == "NOT_FOUND"


def _all_messages(profile: Profile) -> list[Any]:
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap(profile),
            "group.id": f"scan-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        topics = [t for t in reader.list_topics(timeout=10).topics.values() if not t.topic.startswith("__")]
        partitions = [TopicPartition(t.topic, p) for t in topics for p in t.partitions]
        ends = {}
        for tp in partitions:
            low, high = reader.get_watermark_offsets(tp, timeout=10)
            if high > low:
                ends[(tp.topic, tp.partition)] = high
        reader.assign([TopicPartition(t, p, -2) for (t, p) in ends])
        messages: list[Any] = []
        seen: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + 120
        while any(seen.get(k, -1) + 1 < end for k, end in ends.items()) and time.monotonic() < deadline:
            message = reader.poll(1)
            if message is not None and message.error() is None:
                messages.append(message)
                seen[(message.topic(), message.partition())] = message.offset()
        return messages
    finally:
        reader.close()


def _drained(profile: Profile, mesh_secrets: dict[str, str], services: tuple[str, ...]) -> bool:
    """Whether these services' relays have published everything (outbox and audit trail)."""
    for service in services:
        with psycopg.connect(database_url(profile, mesh_secrets, service)) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL)"
                " + (SELECT count(*) FROM audit_trail WHERE published_at IS NULL)"
            ).fetchone()
            if row is None or row[0]:
                return False
    return True


def test_no_card_number_cvv_or_secret_travels_in_any_topic(  # type: ignore[no-untyped-def]
    profile, mesh_secrets, gateway, notifications, receiver
) -> None:
    shop = create_merchant(gateway)
    secret = endpoint(gateway, shop["merchantId"], receiver.url, [CAPTURED])
    pan = fresh_pan()
    card = tokenize(gateway, pan)
    reply = pay_by_card(gateway, shop, card["token"], 3_100, cvv=TEST_CVV)
    assert reply.status_code == 200 and reply.json()["payment"]["state"] == "STATE_CAPTURED", reply.text
    payment_id = reply.json()["payment"]["paymentId"]
    poll(lambda: receiver.for_event(CAPTURED, payment_id), 60, "the card payment's webhook")
    # The other secrets a story handles: an API key, a password and its tokens, and bank
    # account numbers (the merchant's payout account, a payout's destination).
    _, api_key_value = api_key(gateway, shop["merchantId"])
    with httpx.Client(base_url=f"http://127.0.0.1:{profile.gateway_port}", timeout=30) as anonymous:
        person = User(anonymous)
    payout = gateway.post("/v1/payouts", json=payout_body(user_wallet(gateway, 1_000), PAYOUT_IBAN, 300))
    assert payout.status_code == 200, payout.text
    poll(
        lambda: _drained(profile, mesh_secrets, ("users", "merchants", "transfers", "vault", "payments")),
        60,
        "every relay publishing",
    )

    messages = _all_messages(profile)
    ours = []
    forbidden_values = (
        pan,
        "4242424242424242",
        "5555555555554444",
        secret,
        api_key_value.split(".", 1)[1],
        PASSWORD,
        person.token,
        PAYOUT_IBAN,
        "DE89370400440532013000",  # create_merchant's payout account
    )
    for message in messages:
        raw = (message.key() or b"") + (message.value() or b"")
        for forbidden in forbidden_values:
            assert forbidden.encode() not in raw, f"{message.topic()} carries a card number or secret"
        try:
            event = EventEnvelope.FromString(message.value())
        except DecodeError:
            continue  # the poison test's garbage; its raw bytes were checked above
        try:
            text = json.dumps(json_format.MessageToDict(event))
        except (TypeError, KeyError):  # a payload type this test does not import
            text = str(event)
        assert '"cvv"' not in text.lower() and "cvv:" not in text.lower(), "a CVV field in an event"
        if event.aggregate_id == payment_id:
            ours.append(event)
    # The scan did see this card payment's events: the card travels as brand and last4 only.
    assert {e.event_type for e in ours} >= {"interpay.payments.v1.PaymentCreated", CAPTURED}
    captured = next(e for e in ours if e.event_type == CAPTURED)
    card_json = json.dumps(json_format.MessageToDict(captured))
    assert f'"last4": "{pan[-4:]}"' in card_json and pan[:12] not in card_json


def test_only_the_notifications_service_reads_signing_secrets(gateway, channel, receiver) -> None:  # type: ignore[no-untyped-def]
    shop = create_merchant(gateway)
    secret = endpoint(gateway, shop["merchantId"], receiver.url, [CAPTURED])
    request = merchants_pb.ListWebhookEndpointsForDeliveryRequest(merchant_id=shop["merchantId"])
    for identity in ("operator", "payments", "orchestrator"):
        with pytest.raises(grpc.RpcError) as caught:
            MerchantsServiceStub(channel("merchants", identity)).ListWebhookEndpointsForDelivery(request)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = MerchantsServiceStub(channel("merchants", "notifications")).ListWebhookEndpointsForDelivery(
        request
    )
    [found] = reply.endpoints
    assert found.signing_secret == secret and found.webhook_endpoint.url == receiver.url
    unknown = merchants_pb.ListWebhookEndpointsForDeliveryRequest(merchant_id=str(uuid.uuid4()))
    assert (
        not MerchantsServiceStub(channel("merchants", "notifications"))
        .ListWebhookEndpointsForDelivery(unknown)
        .endpoints
    )
