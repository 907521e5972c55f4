"""The wallet's events through the transactional outbox to the mesh's real Kafka: one event
per committed change and none for a refused or rolled-back one, in version order per
wallet, nothing lost while Kafka (and the relay with it) is down, and no secret in any
payload."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from interpay.common.v1.money_pb2 import Money
from interpay.events.v1.envelope_pb2 import EventEnvelope
from interpay.wallet.v1 import wallet_service_pb2 as pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.framework.outbox import RELAY_LEASE_KEY, Event, Outbox, topic_for
from services.framework.topology import Profile
from tests.conftest import ROOT, database_url
from tests.helpers import poll

CUR = "NOK"
WALLET_TOPIC = topic_for("wallet")
PAYLOADS: dict[str, type[Message]] = {
    "WalletCreated": pb.Wallet,
    "WalletFrozen": pb.Wallet,
    "WalletUnfrozen": pb.Wallet,
    "WalletClosed": pb.Wallet,
    "FundsCredited": pb.WalletTransaction,
    "FundsDebited": pb.WalletTransaction,
    "HoldPlaced": pb.Hold,
    "HoldReleased": pb.Hold,
    "HoldExpired": pb.Hold,
    "HoldCaptured": pb.Hold,
}


# -- helpers ------------------------------------------------------------------------------
@pytest.fixture
def wallet(channel) -> WalletServiceStub:  # type: ignore[no-untyped-def]
    return WalletServiceStub(channel("wallet", "orchestrator"))  # holds and transfers are internal


@pytest.fixture
def wallet_db(profile: Profile, mesh_secrets: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url(profile, mesh_secrets, "wallet"), autocommit=True) as conn:
        yield conn


def money(amount: int) -> Money:
    return Money(amount_minor=amount, currency=CUR)


def open_wallet(stub: WalletServiceStub, funds: int = 0, owner_type: int = pb.OWNER_TYPE_USER) -> str:
    wallet_id = stub.CreateWallet(
        pb.CreateWalletRequest(owner_type=owner_type, owner_id=str(uuid.uuid4()), currency=CUR), timeout=10
    ).wallet.wallet_id
    if funds:
        stub.FundWallet(
            pb.FundWalletRequest(wallet_id=wallet_id, amount=money(funds), reference=str(uuid.uuid4())),
            timeout=10,
        )
    return wallet_id


def transfer(
    stub: WalletServiceStub, source: str, destination: str, amount: int, reference: str = ""
) -> None:
    stub.TransferFunds(
        pb.TransferFundsRequest(
            source_wallet_id=source,
            destination_wallet_id=destination,
            amount=money(amount),
            reference=reference or str(uuid.uuid4()),
        ),
        timeout=30,
    )


def place_hold(stub: WalletServiceStub, wallet_id: str, amount: int) -> str:
    expire = Timestamp()
    expire.FromDatetime(datetime.now(UTC) + timedelta(minutes=5))
    return stub.PlaceHold(
        pb.PlaceHoldRequest(
            wallet_id=wallet_id, amount=money(amount), reference=str(uuid.uuid4()), expire_time=expire
        ),
        timeout=10,
    ).hold.hold_id


def outbox_rows(conn: psycopg.Connection[Any], keys: list[str]) -> tuple[int, int]:
    """(rows, of which unpublished) in the outbox for these aggregate ids."""
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM outbox "
        "WHERE message_key = ANY(%s)",
        (keys,),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def published(conn: psycopg.Connection[Any], keys: list[str], timeout: float = 60) -> int:
    """Waits until every outbox row of these aggregates is published; returns how many."""
    return poll(
        lambda: (lambda total, pending: total if total and not pending else 0)(*outbox_rows(conn, keys)),
        timeout,
        f"outbox rows of {keys} published",
    )


def consume(
    profile: Profile, topic: str, keys: set[str], since: datetime, expected: int, timeout: float = 60
) -> dict[str, list[EventEnvelope]]:
    """The envelopes of these aggregates on `topic` written since `since`, by key, in
    partition order, once `expected` messages (duplicates included) have been read."""
    consumer = Consumer(
        {
            "bootstrap.servers": f"127.0.0.1:{profile.kafka_port}",
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = poll(
            lambda: (m := consumer.list_topics(topic, timeout=5)).topics[topic].partitions and m,
            30,
            f"topic {topic}",
        )
        start = int(since.timestamp() * 1000)
        partitions = [TopicPartition(topic, p, start) for p in metadata.topics[topic].partitions]
        consumer.assign(consumer.offsets_for_times(partitions, timeout=10))
        found: dict[str, list[EventEnvelope]] = {}
        read = 0
        deadline = time.monotonic() + timeout
        while read < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            key = msg.key().decode()
            if key in keys:
                found.setdefault(key, []).append(EventEnvelope.FromString(msg.value()))
                read += 1
        assert read >= expected, f"read {read} of {expected} events of {sorted(keys)} from {topic}"
        return found
    finally:
        consumer.close()


def payload(envelope: EventEnvelope) -> Any:
    name = envelope.event_type.removeprefix("interpay.wallet.v1.")
    message = PAYLOADS[name]()
    assert envelope.payload.Unpack(message), envelope.payload.type_url
    return message


def in_order(events: list[EventEnvelope]) -> list[EventEnvelope]:
    """The events without redelivered duplicates, checked gap-free: versions 1, 2, 3, ..."""
    seen: dict[str, EventEnvelope] = {}
    for e in events:
        seen.setdefault(e.event_id, e)
    unique = list(seen.values())
    assert [e.aggregate_version for e in unique] == list(range(1, len(unique) + 1)), [
        (e.aggregate_version, e.event_type) for e in unique
    ]
    return unique


def names(events: list[EventEnvelope]) -> list[str]:
    return [e.event_type.removeprefix("interpay.wallet.v1.") for e in events]


# -- tests --------------------------------------------------------------------------------
def test_every_committed_wallet_change_is_one_event_in_version_order(  # type: ignore[no-untyped-def]
    profile, wallet, wallet_db
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    payer, shop = open_wallet(wallet, 1000), open_wallet(wallet, 0, pb.OWNER_TYPE_MERCHANT)
    spare = open_wallet(wallet)
    transfer(wallet, payer, shop, 300)
    hold_id = place_hold(wallet, payer, 200)
    wallet.CaptureHold(
        pb.CaptureHoldRequest(
            hold_id=hold_id, destination_wallet_id=shop, amount=money(150), reference=str(uuid.uuid4())
        ),
        timeout=10,
    )
    released = place_hold(wallet, payer, 100)
    wallet.ReleaseHold(pb.ReleaseHoldRequest(hold_id=released), timeout=10)
    wallet.FreezeWallet(pb.FreezeWalletRequest(wallet_id=payer, reason="test"), timeout=10)
    wallet.UnfreezeWallet(pb.UnfreezeWalletRequest(wallet_id=payer), timeout=10)
    wallet.CloseWallet(pb.CloseWalletRequest(wallet_id=spare), timeout=10)

    keys = [payer, shop, spare]
    total = published(wallet_db, keys)
    events = consume(profile, WALLET_TOPIC, set(keys), since, total)

    payer_events = in_order(events[payer])
    assert names(payer_events) == [
        "WalletCreated",
        "FundsCredited",
        "FundsDebited",
        "HoldPlaced",
        "HoldCaptured",
        "HoldPlaced",
        "HoldReleased",
        "WalletFrozen",
        "WalletUnfrozen",
    ]
    assert names(in_order(events[shop])) == ["WalletCreated", "FundsCredited", "FundsCredited"]
    assert names(in_order(events[spare])) == ["WalletCreated", "WalletClosed"]
    assert total == len(payer_events) + 3 + 2  # one outbox row per event, none more

    # The last event carries the wallet's current version, and payloads say what happened.
    final = wallet.GetWallet(pb.GetWalletRequest(wallet_id=payer), timeout=10).wallet
    assert payer_events[-1].aggregate_version == final.version
    debit = payload(payer_events[2])
    assert (debit.amount.amount_minor, debit.balance_after.amount_minor) == (-300, 700)
    assert debit.counterparty_wallet_id == shop and debit.kind == pb.TRANSACTION_KIND_TRANSFER
    captured = payload(payer_events[4])
    assert captured.hold_id == hold_id and captured.state == pb.Hold.STATE_CAPTURED
    assert captured.captured_amount.amount_minor == 150
    credit = payload(in_order(events[shop])[2])
    assert (credit.amount.amount_minor, credit.balance_after.amount_minor) == (150, 450)
    assert credit.kind == pb.TRANSACTION_KIND_CAPTURE
    assert payload(payer_events[-1]).state == pb.Wallet.STATE_ACTIVE
    for e in payer_events:
        assert e.aggregate_type == "wallet" and e.aggregate_id == payer and e.producer == "wallet"
        assert uuid.UUID(e.event_id) and e.occurred_at.seconds > 0
    # The request's trace travels with its events.
    assert all(e.traceparent.startswith("00-") for e in payer_events)


def test_a_hold_that_expires_is_an_event(profile, wallet, wallet_db) -> None:  # type: ignore[no-untyped-def]
    since = datetime.now(UTC) - timedelta(seconds=5)
    payer = open_wallet(wallet, 100)
    expire = Timestamp()
    expire.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))
    hold_id = wallet.PlaceHold(
        pb.PlaceHoldRequest(
            wallet_id=payer, amount=money(40), reference=str(uuid.uuid4()), expire_time=expire
        ),
        timeout=10,
    ).hold.hold_id
    poll(
        lambda: (
            wallet.GetHold(pb.GetHoldRequest(hold_id=hold_id), timeout=10).hold.state == pb.Hold.STATE_EXPIRED
        ),
        60,
        "the hold expired by the wallet's expiry job",
    )
    total = published(wallet_db, [payer])
    events = in_order(consume(profile, WALLET_TOPIC, {payer}, since, total)[payer])
    assert names(events) == ["WalletCreated", "FundsCredited", "HoldPlaced", "HoldExpired"]
    expired = payload(events[-1])
    assert expired.hold_id == hold_id and expired.state == pb.Hold.STATE_EXPIRED


def test_refused_and_replayed_changes_emit_no_event(profile, wallet, wallet_db) -> None:  # type: ignore[no-untyped-def]
    since = datetime.now(UTC) - timedelta(seconds=5)
    payer, payee = open_wallet(wallet, 100), open_wallet(wallet)
    reference = str(uuid.uuid4())
    transfer(wallet, payer, payee, 60, reference)
    transfer(wallet, payer, payee, 60, reference)  # a retry: replayed, not moved again
    with pytest.raises(grpc.RpcError) as refused:
        transfer(wallet, payer, payee, 500)  # insufficient funds
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as rolled_back:
        # The hold row is inserted, then the funds check fails and the transaction rolls back.
        place_hold(wallet, payer, 1000)
    assert rolled_back.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    total = published(wallet_db, [payer, payee])
    assert total == 5  # created x2, funded, debited, credited
    events = consume(profile, WALLET_TOPIC, {payer, payee}, since, total)
    assert names(in_order(events[payer])) == ["WalletCreated", "FundsCredited", "FundsDebited"]
    assert names(in_order(events[payee])) == ["WalletCreated", "FundsCredited"]


async def test_an_event_exists_if_and_only_if_its_transaction_commits(  # type: ignore[no-untyped-def]
    profile, mesh_secrets, wallet_db
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    outbox = Outbox("wallet")
    kept, dropped = str(uuid.uuid4()), str(uuid.uuid4())
    probe = pb.Wallet(wallet_id=kept, currency=CUR)
    url = database_url(profile, mesh_secrets, "wallet")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        async with conn.transaction():
            await outbox.add(conn, [Event("probe", kept, 1, probe)])
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await outbox.add(conn, [Event("probe", dropped, 1, probe)])
                raise RuntimeError("the change fails after its event was written")

    assert outbox_rows(wallet_db, [dropped]) == (0, 0)
    assert published(wallet_db, [kept]) == 1
    events = consume(profile, topic_for("probe"), {kept, dropped}, since, 1)
    assert list(events) == [kept]
    assert events[kept][0].event_type == "interpay.wallet.v1.Wallet"  # defaults to the payload's type


def test_nothing_is_lost_while_kafka_and_the_relay_are_down(  # type: ignore[no-untyped-def]
    profile, wallet, wallet_db, channel
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    payer, payee = open_wallet(wallet, 10_000), open_wallet(wallet)
    published(wallet_db, [payer, payee])
    conf = str(ROOT / ".data" / profile.name / "supervisord.conf")

    def ctl(*args: str) -> None:
        subprocess.run([str(ROOT / ".venv" / "bin" / "supervisorctl"), "-c", conf, *args], check=True)

    ctl("stop", "kafka")
    try:
        for _ in range(20):
            transfer(wallet, payer, payee, 7)
        # Everything committed while the broker is away waits in the outbox...
        assert outbox_rows(wallet_db, [payer, payee]) == (43, 40)
        poll(lambda: metric(profile, "interpay_outbox_pending_events") >= 40, 30, "pending-events metric")
        poll(lambda: metric(profile, "interpay_outbox_lag_seconds") > 0, 30, "outbox lag metric")
        # ...also across a crash of the relay's process (the wallet, restarted by supervisord).
        ctl("signal", "KILL", "wallet")
        poll(lambda: healthy(channel("wallet")), 60, "wallet back after kill -9")
        for _ in range(5):
            transfer(wallet, payer, payee, 7)
        assert outbox_rows(wallet_db, [payer, payee]) == (53, 50)
    finally:
        ctl("start", "kafka")

    assert published(wallet_db, [payer, payee], timeout=120) == 53
    events = consume(profile, WALLET_TOPIC, {payer, payee}, since, 53)
    payer_events = in_order(events[payer])
    assert names(payer_events) == ["WalletCreated", "FundsCredited", *["FundsDebited"] * 25]
    assert [payload(e).balance_after.amount_minor for e in payer_events[2:]] == [
        10_000 - 7 * n for n in range(1, 26)
    ]
    assert len(in_order(events[payee])) == 26
    poll(lambda: metric(profile, "interpay_outbox_pending_events") == 0, 30, "outbox drained")


def metric(profile: Profile, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{profile.metrics_port('wallet')}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") and 'service="wallet"' in line:
                return float(line.rsplit(" ", 1)[1])
    return -1.0


def healthy(ch: grpc.Channel) -> bool:
    try:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_event_payloads_carry_no_secret(profile, wallet, wallet_db, mesh_secrets) -> None:  # type: ignore[no-untyped-def]
    since = datetime.now(UTC) - timedelta(seconds=5)
    payer, payee = open_wallet(wallet, 500), open_wallet(wallet)
    transfer(wallet, payer, payee, 5)
    hold = place_hold(wallet, payer, 10)
    wallet.ReleaseHold(pb.ReleaseHoldRequest(hold_id=hold), timeout=10)
    total = published(wallet_db, [payer, payee])
    events = consume(profile, WALLET_TOPIC, {payer, payee}, since, total)
    data = ROOT / ".data" / profile.name
    secrets = [v for v in mesh_secrets.values() if v]
    if (data / "jwt-signing-key.pem").exists():
        secrets.append((data / "jwt-signing-key.pem").read_text().splitlines()[1])
    raw_secret = (data / "vault-kek.bin").read_bytes() if (data / "vault-kek.bin").exists() else b""
    for envelope in (e for es in events.values() for e in es):
        wire = envelope.SerializeToString()
        text = json.dumps(str(envelope)) + json.dumps(str(payload(envelope)))
        for secret in secrets:
            assert secret.encode() not in wire and secret not in text
        assert not raw_secret or raw_secret not in wire
        # Only the contract's resource messages travel, and none of them has a secret field.
        assert type(payload(envelope)) in {pb.Wallet, pb.WalletTransaction, pb.Hold}


def test_one_relay_at_a_time_holds_the_publishing_lease(wallet_db) -> None:  # type: ignore[no-untyped-def]
    def holders() -> int:
        row = wallet_db.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s "
            "AND a.datname = current_database()",
            (RELAY_LEASE_KEY,),
        ).fetchone()
        assert row is not None
        return int(row[0])

    poll(lambda: holders() == 1, 30, "the wallet's relay holding the lease")
    # A second relay (here: this connection) cannot take it while the first lives.
    taken = wallet_db.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LEASE_KEY,)).fetchone()
    assert taken is not None and taken[0] is False
    assert holders() == 1
