"""The framework's event consumer (services/framework/consumer.py) as the notifications
service runs it, against the mesh's real Kafka and PostgreSQL: an event published twice
changes nothing the second time, poison events end in the dead-letter topic while the
consumer carries on, a consumer killed mid-batch applies every event exactly once after
its restart, the lag is exported, and no topic carries a card number, CVV or secret.

Events are published straight to `interpay.events.v1.payment` here, as the payments
relay would publish them, each for a fresh user, so no test sees another's."""

from __future__ import annotations

import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from google.protobuf import any_pb2
from google.protobuf.message import Message as ProtoMessage
from grpc_health.v1 import health_pb2, health_pb2_grpc
from interpay.common.v1.money_pb2 import Money
from interpay.events.v1.envelope_pb2 import EventEnvelope
from interpay.payments.v1 import payments_service_pb2 as payments_pb
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.framework.consumer import dlq_topic
from services.framework.outbox import topic_for
from services.framework.proto import timestamp
from services.framework.topology import Profile
from tests.conftest import ROOT, database_url
from tests.helpers import poll

PAYMENT_TOPIC = topic_for("payment")
GROUP = "notifications"  # services/notifications/bootstrap.py


# -- helpers shared with tests/e2e/test_webhooks.py ---------------------------------------
def bootstrap(profile: Profile) -> str:
    return f"127.0.0.1:{profile.kafka_port}"


@pytest.fixture
def notifications_db(profile: Profile, mesh_secrets: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    url = database_url(profile, mesh_secrets, "notifications")
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def payment_message(user_id: str, merchant_id: str | None = None, amount: int = 1_250) -> payments_pb.Payment:
    money = Money(amount_minor=amount, currency="EUR")
    return payments_pb.Payment(
        payment_id=str(uuid.uuid4()),
        merchant_id=merchant_id or str(uuid.uuid4()),
        payer_wallet_id=str(uuid.uuid4()),
        payer_user_id=user_id,
        amount=money,
        captured_amount=money,
        state=payments_pb.Payment.STATE_CAPTURED,
        description="order 7",
        version=4,
    )


def envelope(
    payload: ProtoMessage, event_type: str = "interpay.payments.v1.PaymentCaptured", aggregate_id: str = ""
) -> EventEnvelope:
    packed = any_pb2.Any()
    packed.Pack(payload)
    return EventEnvelope(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        aggregate_type="payment",
        aggregate_id=aggregate_id or getattr(payload, "payment_id", "") or str(uuid.uuid4()),
        aggregate_version=4,
        occurred_at=timestamp(datetime.now(UTC)),
        producer="payments",
        payload=packed,
    )


def publish(
    profile: Profile, messages: list[tuple[str, bytes]], topic: str = PAYMENT_TOPIC
) -> list[tuple[int, int]]:
    """Publishes (key, value) pairs and waits for Kafka's acknowledgement of each; returns
    their (partition, offset)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap(profile),
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
        }
    )
    placed: dict[int, tuple[int, int]] = {}

    def report(index: int) -> Callable[[KafkaError | None, Any], None]:
        def done(err: KafkaError | None, msg: Any) -> None:
            assert err is None, err
            placed[index] = (msg.partition(), msg.offset())

        return done

    for i, (key, value) in enumerate(messages):
        producer.produce(topic, key=key.encode(), value=value, on_delivery=report(i))
        producer.poll(0)
    assert producer.flush(30) == 0
    return [placed[i] for i in range(len(messages))]


def committed_past(profile: Profile, topic: str, placed: list[tuple[int, int]]) -> bool:
    """Whether the notifications group has committed past every given message."""
    reader = Consumer(
        {"bootstrap.servers": bootstrap(profile), "group.id": GROUP, "enable.auto.commit": False}
    )
    try:
        partitions = sorted({p for p, _ in placed})
        committed = {
            tp.partition: tp.offset
            for tp in reader.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        }
    finally:
        reader.close()
    return all(committed[p] > offset for p, offset in placed)


def publish_consumed(
    profile: Profile, events: list[EventEnvelope], topic: str, what: str = "the events consumed"
) -> None:
    """Publishes the envelopes, each keyed by its aggregate as a relay would, and waits until
    the notifications group has committed past all of them."""
    placed = publish(profile, [(e.aggregate_id, e.SerializeToString()) for e in events], topic)
    poll(lambda: committed_past(profile, topic, placed), 60, what)


def read_topic(
    profile: Profile, topic: str, stop: Callable[[list[Any]], bool], timeout: float = 60
) -> list[Any]:
    """Every message of `topic` from the beginning, until `stop(messages)` holds."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap(profile),
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = reader.list_topics(topic, timeout=10).topics[topic]
        reader.assign([TopicPartition(topic, p, -2) for p in metadata.partitions])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop(messages):
            message = reader.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
        return messages
    finally:
        reader.close()


def notifications_of(db: psycopg.Connection[Any], user_id: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT event_id, template, title, body FROM notifications WHERE user_id = %s", (user_id,)
    ).fetchall()


def processed(db: psycopg.Connection[Any], event_ids: list[str]) -> dict[str, str]:
    rows = db.execute(
        "SELECT event_id::text, outcome FROM processed_events "
        "WHERE consumer = %s AND event_id = ANY(%s::uuid[])",
        (GROUP, event_ids),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def metric_lines(profile: Profile, service: str, name: str) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{profile.metrics_port(service)}/metrics", timeout=5) as r:
        return [line for line in r.read().decode().splitlines() if line.startswith(name)]


# -- tests --------------------------------------------------------------------------------
def test_an_event_published_twice_changes_nothing_the_second_time(profile, notifications_db) -> None:  # type: ignore[no-untyped-def]
    user = str(uuid.uuid4())
    event = envelope(payment_message(user))
    wire = event.SerializeToString()
    placed = publish(profile, [(event.aggregate_id, wire), (event.aggregate_id, wire)])
    poll(lambda: committed_past(profile, PAYMENT_TOPIC, placed), 60, "both copies consumed")
    rows = notifications_of(notifications_db, user)
    assert len(rows) == 1
    assert str(rows[0][0]) == event.event_id and rows[0][1] == "payment_captured"
    assert "12.50 EUR" in rows[0][3]
    assert processed(notifications_db, [event.event_id]) == {event.event_id: "PROCESSED"}


def test_poison_events_go_to_the_dead_letter_topic_and_the_consumer_carries_on(  # type: ignore[no-untyped-def]
    profile, notifications_db
) -> None:
    garbage_key, user = f"garbage-{uuid.uuid4()}", str(uuid.uuid4())
    # Not an envelope at all; an envelope whose payload is not the Payment its type promises.
    wrong = envelope(Money(amount_minor=1, currency="EUR"), aggregate_id=str(uuid.uuid4()))
    # A good event for the same key after the bad one: it must not be stuck behind it.
    good = envelope(payment_message(user), aggregate_id=wrong.aggregate_id)
    placed = publish(
        profile,
        [
            (garbage_key, b"\xff\x00 definitely not protobuf \xff"),
            (wrong.aggregate_id, wrong.SerializeToString()),
            (good.aggregate_id, good.SerializeToString()),
        ],
    )
    poll(lambda: committed_past(profile, PAYMENT_TOPIC, placed), 90, "all three consumed")
    keys = {garbage_key.encode(), wrong.aggregate_id.encode()}

    # Every consumer of the topic dead-letters them (the merchants service too): ours are
    # those whose headers name the notifications consumer.
    def mine(ms: list[Any]) -> dict[bytes, Any]:
        return {
            m.key(): m
            for m in ms
            if m.key() in keys and dict(m.headers())["interpay-dlq-consumer"] == GROUP.encode()
        }

    ours = mine(read_topic(profile, dlq_topic(PAYMENT_TOPIC), lambda ms: keys <= set(mine(ms))))
    assert set(ours) == keys, "both poison events are in the dead-letter topic"
    assert ours[wrong.aggregate_id.encode()].value() == wrong.SerializeToString()  # unchanged
    headers = dict(ours[wrong.aggregate_id.encode()].headers())
    assert headers["interpay-dlq-topic"] == PAYMENT_TOPIC.encode()
    assert int(headers["interpay-dlq-attempts"]) >= 2  # retried before giving up
    assert b"UnexpectedPayload" in headers["interpay-dlq-error"]
    assert int(dict(ours[garbage_key.encode()].headers())["interpay-dlq-attempts"]) == 0
    assert processed(notifications_db, [wrong.event_id, good.event_id]) == {
        wrong.event_id: "DEAD_LETTERED",
        good.event_id: "PROCESSED",
    }
    assert len(notifications_of(notifications_db, user)) == 1


def test_a_consumer_killed_mid_batch_applies_each_event_exactly_once(  # type: ignore[no-untyped-def]
    profile, notifications_db, channel
) -> None:
    user, count = str(uuid.uuid4()), 1_000  # enough that the batches cannot finish before the kill
    events = [envelope(payment_message(user, amount=100 + i)) for i in range(count)]
    ids = [e.event_id for e in events]
    conf = str(ROOT / ".data" / profile.name / "supervisord.conf")
    placed = publish(profile, [(e.aggregate_id, e.SerializeToString()) for e in events])
    # Kill it while part of the events are applied and the rest are not.
    done = poll(
        lambda: (n := len(processed(notifications_db, ids))) and n < count and n,
        60,
        "the consumer part-way through the events",
        interval=0.02,
    )
    subprocess.run(
        [str(ROOT / ".venv/bin/supervisorctl"), "-c", conf, "signal", "KILL", "notifications"], check=True
    )
    killed_at = len(processed(notifications_db, ids))
    assert done <= killed_at < count, "killed mid-way"

    def healthy() -> bool:
        try:
            stub = health_pb2_grpc.HealthStub(channel("notifications"))
            return (
                stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        except Exception:
            return False

    poll(healthy, 60, "notifications restarted by the supervisor")
    poll(
        lambda: committed_past(profile, PAYMENT_TOPIC, placed), 120, "every event consumed after the restart"
    )
    outcomes = processed(notifications_db, ids)
    assert len(outcomes) == count and set(outcomes.values()) == {"PROCESSED"}
    rows = notifications_of(notifications_db, user)
    assert len(rows) == count, "each event's notification exactly once"
    assert sorted(str(r[0]) for r in rows) == sorted(ids)


def test_a_burst_on_one_partition_is_applied_in_few_transactions(profile, notifications_db) -> None:  # type: ignore[no-untyped-def]
    """Each partition's share of a batch commits in one transaction (with its records), so
    a consumer keeps up with a busy producer; rows written by one transaction share its
    xmin. 300 events of one aggregate (one partition) in one burst take a handful."""
    user, payment, count = str(uuid.uuid4()), str(uuid.uuid4()), 300
    events = [envelope(payment_message(user, amount=100 + i), aggregate_id=payment) for i in range(count)]
    ids = [e.event_id for e in events]
    placed = publish(profile, [(payment, e.SerializeToString()) for e in events])
    assert len({p for p, _ in placed}) == 1
    poll(lambda: committed_past(profile, PAYMENT_TOPIC, placed), 60, "the burst consumed")
    assert set(processed(notifications_db, ids).values()) == {"PROCESSED"}
    assert len(notifications_of(notifications_db, user)) == count
    transactions = notifications_db.execute(
        "SELECT count(DISTINCT xmin::text) FROM processed_events "
        "WHERE consumer = %s AND event_id = ANY(%s::uuid[])",
        (GROUP, ids),
    ).fetchone()
    assert transactions is not None and transactions[0] <= count // 10, transactions


def test_the_consumer_lag_is_exported(profile) -> None:  # type: ignore[no-untyped-def]
    lines = poll(
        lambda: [
            line
            for line in metric_lines(profile, "notifications", "interpay_consumer_lag_messages")
            if f'topic="{PAYMENT_TOPIC}"' in line
        ],
        30,
        "the lag gauge",
    )
    assert all('consumer="notifications"' in line for line in lines)
    assert all(float(line.rsplit(" ", 1)[1]) >= 0 for line in lines)


def test_a_transfer_notifies_both_wallet_owners_once(notifications_db, channel) -> None:  # type: ignore[no-untyped-def]
    wallet = WalletServiceStub(channel("wallet", "orchestrator"))  # transfers are internal
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())

    def open_wallet(owner: str) -> str:
        request = wallet_pb.CreateWalletRequest(
            owner_type=wallet_pb.OWNER_TYPE_USER, owner_id=owner, currency="EUR"
        )
        return wallet.CreateWallet(request, timeout=10).wallet.wallet_id

    source, destination = open_wallet(alice), open_wallet(bob)
    money = Money(amount_minor=5_000, currency="EUR")
    wallet.FundWallet(
        wallet_pb.FundWalletRequest(wallet_id=source, amount=money, reference=str(uuid.uuid4()))
    )
    wallet.TransferFunds(
        wallet_pb.TransferFundsRequest(
            source_wallet_id=source,
            destination_wallet_id=destination,
            amount=Money(amount_minor=1_234, currency="EUR"),
            reference=str(uuid.uuid4()),
            kind=wallet_pb.TRANSACTION_KIND_TRANSFER,
        ),
        timeout=30,
    )
    received = poll(lambda: notifications_of(notifications_db, bob), 60, "bob's notification")
    sent = poll(lambda: notifications_of(notifications_db, alice), 60, "alice's notification")
    assert [(r[1], r[2]) for r in received] == [("transfer_received", "Money received")]
    assert "12.34 EUR" in received[0][3] and "Balance: 12.34 EUR" in received[0][3]
    # Only the transfer: the funding of alice's wallet is no notification.
    assert [(r[1], r[2]) for r in sent] == [("transfer_sent", "Money sent")]
    assert "12.34 EUR" in sent[0][3] and "Balance: 37.66 EUR" in sent[0][3]


REFUND_TOPIC = topic_for("refund")


def refund_envelope(payment: payments_pb.Payment, what: str, amount: int) -> EventEnvelope:
    state = {
        "RefundSucceeded": payments_pb.Refund.STATE_SUCCEEDED,
        "RefundFailed": payments_pb.Refund.STATE_FAILED,
    }
    refund = payments_pb.Refund(
        refund_id=str(uuid.uuid4()),
        payment_id=payment.payment_id,
        amount=Money(amount_minor=amount, currency="EUR"),
        reason="damaged",
        state=state[what],
    )
    event = envelope(refund, f"interpay.payments.v1.{what}", aggregate_id=refund.refund_id)
    event.aggregate_type, event.aggregate_version = "refund", 2
    return event


def waiting_refunds(db: psycopg.Connection[Any], payment_id: str) -> list[str]:
    rows = db.execute(
        "SELECT event_id::text FROM pending_refund_events WHERE payment_id = %s ORDER BY position",
        (payment_id,),
    ).fetchall()
    return [r[0] for r in rows]


def test_a_refund_event_read_before_its_payment_waits_for_it_and_is_told_once(  # type: ignore[no-untyped-def]
    profile, notifications_db
) -> None:
    """Refund events name the payment only; its payer is learnt from the payment's events,
    on another topic that Kafka does not order with the refunds': refund events read first
    wait, the consumer carries on, and the payment's first event applies them, once."""
    user = str(uuid.uuid4())
    payment = payment_message(user)
    early = [refund_envelope(payment, "RefundSucceeded", 300), refund_envelope(payment, "RefundFailed", 200)]
    publish_consumed(profile, early, REFUND_TOPIC, "the early refund events consumed")
    # (Two refunds are two keys, maybe two partitions: in either order.)
    assert sorted(waiting_refunds(notifications_db, payment.payment_id)) == sorted(e.event_id for e in early)
    assert notifications_of(notifications_db, user) == []
    assert processed(notifications_db, [e.event_id for e in early]) == {
        e.event_id: "PROCESSED" for e in early
    }

    # The payment's event: the payer learnt, the waiting refunds told, nothing left waiting.
    captured = envelope(payment)
    publish(profile, [(captured.aggregate_id, captured.SerializeToString())])
    rows = poll(lambda: (r := notifications_of(notifications_db, user))[2:] and r, 60, "three notifications")
    by_event = {str(r[0]): r for r in rows}
    assert by_event[captured.event_id][1] == "payment_captured"
    assert by_event[early[0].event_id][1:3] == ("refund_succeeded", "Refund received")
    assert "3.00 EUR of your payment for order 7" in by_event[early[0].event_id][3]
    assert by_event[early[1].event_id][1:3] == ("refund_failed", "Refund failed")
    assert waiting_refunds(notifications_db, payment.payment_id) == []

    # A refund event read after the payment is told at once; a redelivered one changes nothing.
    late = refund_envelope(payment, "RefundSucceeded", 100)
    publish_consumed(profile, [late, early[0]], REFUND_TOPIC, "the late refund events consumed")
    rows = notifications_of(notifications_db, user)
    assert sorted(str(r[0]) for r in rows) == sorted(
        [captured.event_id, *(e.event_id for e in early), late.event_id]
    )
    assert waiting_refunds(notifications_db, payment.payment_id) == []


PAYOUT_TOPIC, WALLET_TOPIC = topic_for("payout"), topic_for("wallet")


def test_a_payout_event_read_before_its_wallet_waits_for_it_and_is_told_once(  # type: ignore[no-untyped-def]
    profile, notifications_db
) -> None:
    """A payout event names its wallet; the owner is learnt from the wallet's creation, on
    another topic: the payout's outcome waits for it, then is told to the owner, once; a
    wallet no user owns is told nothing."""
    from interpay.transfers.v1 import transfers_service_pb2 as transfers_pb

    def payout_envelope(wallet_id: str, what: str) -> EventEnvelope:
        payout = transfers_pb.Payout(
            payout_id=str(uuid.uuid4()),
            source_wallet_id=wallet_id,
            destination=transfers_pb.ExternalAccount(
                holder_name="Ada", iban="DE****************3000", country_code="DE"
            ),
            amount=Money(amount_minor=2_500, currency="EUR"),
            failure_reason="AC04" if what == "PayoutFailed" else "",
        )
        event = envelope(payout, f"interpay.transfers.v1.{what}", aggregate_id=payout.payout_id)
        event.aggregate_type, event.aggregate_version = "payout", 3
        return event

    def created(wallet_id: str, owner_type: Any, owner: str) -> EventEnvelope:
        wallet = wallet_pb.Wallet(wallet_id=wallet_id, owner_type=owner_type, owner_id=owner, currency="EUR")
        event = envelope(wallet, "interpay.wallet.v1.WalletCreated", aggregate_id=wallet_id)
        event.aggregate_type, event.aggregate_version = "wallet", 1
        return event

    def waiting(wallet_id: str) -> int:
        row = notifications_db.execute(
            "SELECT count(*) FROM pending_payout_events WHERE wallet_id = %s", (wallet_id,)
        ).fetchone()
        return int(row[0])

    user, mine, shop = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    early = [payout_envelope(mine, "PayoutCompleted"), payout_envelope(shop, "PayoutFailed")]
    publish_consumed(profile, early, PAYOUT_TOPIC, "the early payout events consumed")
    assert waiting(mine) == 1 and waiting(shop) == 1
    assert notifications_of(notifications_db, user) == []

    wallets = [
        created(mine, wallet_pb.OWNER_TYPE_USER, user),
        created(shop, wallet_pb.OWNER_TYPE_MERCHANT, shop),
    ]
    publish_consumed(profile, wallets, WALLET_TOPIC, "the wallets' creation consumed")
    rows = notifications_of(notifications_db, user)
    assert [(str(r[0]), r[1]) for r in rows] == [(early[0].event_id, "payout_completed")]
    assert "25.00 EUR was paid out to the account ending 3000." == rows[0][3]
    assert waiting(mine) == 0 and waiting(shop) == 0
    assert notifications_of(notifications_db, shop) == []

    # Read after the wallet: told at once; redelivered: nothing more.
    late = payout_envelope(mine, "PayoutFailed")
    publish_consumed(profile, [late, early[0]], PAYOUT_TOPIC, "the late payout events consumed")
    rows = notifications_of(notifications_db, user)
    assert sorted((str(r[0]), r[1]) for r in rows) == sorted(
        [(early[0].event_id, "payout_completed"), (late.event_id, "payout_failed")]
    )
