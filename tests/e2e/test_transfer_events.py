"""The transfers service's events through its outbox to the mesh's real Kafka: transfers and
payouts made through Envoy are one event per committed change (created, then each change
of state), in version order per record, with the contract's message as payload; a
refused request (an invalid one, the same id with another request, an outcome the record
cannot take, a replayed outcome) writes none; a payout's account number never travels
whole.

An event exists if and only if its outbox row does (services/framework/outbox.py), so
"no event" is checked on the outbox itself: after every refusal, the record's rows are
still exactly those of its committed changes, and Kafka carries exactly those."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from google.protobuf import json_format
from interpay.events.v1.envelope_pb2 import EventEnvelope
from interpay.transfers.v1 import transfers_service_pb2 as pb
from interpay.transfers.v1.transfers_service_pb2_grpc import TransfersServiceStub

from services.framework.outbox import topic_for
from services.framework.topology import Profile
from tests.conftest import database_url
from tests.e2e.test_transfers_payouts import (
    LATE,
    PAID,
    REJECTED,
    payout_body,
    settled_payout,
    transfer_body,
    user_wallet,
)
from tests.helpers import http_details
from tests.integration.test_events_outbox import consume, in_order, outbox_rows, published

PREFIX = "interpay.transfers.v1."


@pytest.fixture(scope="module")
def transfers_db(profile: Profile, mesh_secrets: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url(profile, mesh_secrets, "transfers"), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def as_orchestrator(channel) -> TransfersServiceStub:  # type: ignore[no-untyped-def]
    """RecordTransferOutcome / RecordPayoutOutcome admit only the orchestrator."""
    return TransfersServiceStub(channel("transfers", "orchestrator"))


def names(events: list[EventEnvelope]) -> list[str]:
    return [e.event_type.removeprefix(PREFIX) for e in events]


def unpacked(envelope: EventEnvelope, cls: type[Any]) -> Any:
    message = cls()
    assert envelope.payload.Unpack(message), envelope.payload.type_url
    return message


def events_of(
    profile: Profile, conn: psycopg.Connection[Any], aggregate: str, keys: list[str], since: datetime
) -> dict[str, list[EventEnvelope]]:
    """Each record's events on its topic, duplicates dropped and checked gap-free from 1,
    once every outbox row of theirs is published; exactly as many as there are rows."""
    total = published(conn, keys)
    found = consume(profile, topic_for(aggregate), set(keys), since, total)
    events = {key: in_order(found.get(key, [])) for key in keys}
    assert sum(len(e) for e in events.values()) == total  # one outbox row per event, none more
    for key, envelopes in events.items():
        for e in envelopes:
            assert (e.aggregate_type, e.aggregate_id, e.producer) == (aggregate, key, "transfers")
    return events


def test_every_committed_transfer_change_is_one_event_and_refusals_none(
    profile: Profile, gateway: httpx.Client, transfers_db: psycopg.Connection[Any], as_orchestrator
) -> None:  # type: ignore[no-untyped-def]
    since = datetime.now(UTC) - timedelta(seconds=5)
    source, destination = user_wallet(gateway, 5_000), user_wallet(gateway)

    completed = transfer_body(source, destination, 1_200, description="rent share")
    first = gateway.post("/v1/transfers", json=completed)
    assert first.status_code == 200, first.text
    assert gateway.post("/v1/transfers", json=completed).status_code == 200  # a replay: no change
    # The same id with another request is refused: nothing changes, no event.
    reused = gateway.post(
        "/v1/transfers", json={**completed, "amount": {"amountMinor": "1", "currency": "EUR"}}
    )
    assert reused.status_code == 400, reused.text
    assert http_details(reused.json())[0]["reason"] == "IDEMPOTENCY_MISMATCH"  # type: ignore[index]
    # An outcome the completed transfer cannot take (the orchestrator's own refusal path):
    # refused, rolled back, no event.
    with pytest.raises(grpc.RpcError) as err:
        as_orchestrator.RecordTransferOutcome(
            pb.RecordTransferOutcomeRequest(
                transfer_id=completed["transferId"],
                state=pb.Transfer.STATE_FAILED,
                reference=f"test:{uuid.uuid4()}",
                failure_reason="INSUFFICIENT_FUNDS",
            ),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    failed = transfer_body(source, destination, 3_801)  # 5_000 - 1_200 are left
    refused = gateway.post("/v1/transfers", json=failed)
    assert refused.status_code == 400, refused.text
    assert http_details(refused.json())[0]["reason"] == "INSUFFICIENT_FUNDS"  # type: ignore[index]
    assert gateway.post("/v1/transfers", json=failed).status_code == 400  # the refusal replayed

    # An invalid request is refused before anything is recorded.
    invalid = transfer_body(source, source, 100)
    assert gateway.post("/v1/transfers", json=invalid).status_code == 400

    events = events_of(
        profile, transfers_db, "transfer", [completed["transferId"], failed["transferId"]], since
    )
    assert outbox_rows(transfers_db, [invalid["transferId"]]) == (0, 0)
    done = events[completed["transferId"]]
    assert names(done) == ["TransferCreated", "TransferCompleted"]
    created, finished = (unpacked(e, pb.Transfer) for e in done)
    assert created.state == pb.Transfer.STATE_PENDING and created.ledger_transaction_id == ""
    assert (created.amount.amount_minor, created.description) == (1_200, "rent share")
    assert finished.state == pb.Transfer.STATE_COMPLETED and finished.ledger_transaction_id
    assert (finished.source_wallet_id, finished.destination_wallet_id) == (source, destination)
    assert finished == json_format.ParseDict(first.json()["transfer"], pb.Transfer())  # as the API answered
    assert all(e.traceparent.startswith("00-") for e in done)  # the request's trace travels with them
    bounced = events[failed["transferId"]]
    assert names(bounced) == ["TransferCreated", "TransferFailed"]
    assert unpacked(bounced[1], pb.Transfer).failure_reason == "INSUFFICIENT_FUNDS"


def test_payout_events_follow_the_rail_and_never_carry_the_account_whole(
    profile: Profile, gateway: httpx.Client, transfers_db: psycopg.Connection[Any]
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    source = user_wallet(gateway, 10_000)
    paid, rejected, late = (payout_body(source, iban, 1_000) for iban in (PAID, REJECTED, LATE))
    assert gateway.post("/v1/payouts", json=paid).status_code == 200
    reply = gateway.post("/v1/payouts", json=rejected)
    assert reply.status_code == 400, reply.text
    assert gateway.post("/v1/payouts", json=late).status_code in (200, 409)  # the rail answers late
    assert settled_payout(gateway, late["payoutId"])["state"] == "STATE_COMPLETED"
    # Another's request under a payout's id: refused, no event.
    assert (
        gateway.post("/v1/payouts", json={**paid, "destination": rejected["destination"]}).status_code == 400
    )

    keys = [paid["payoutId"], rejected["payoutId"], late["payoutId"]]
    events = events_of(profile, transfers_db, "payout", keys, since)
    assert names(events[paid["payoutId"]]) == ["PayoutCreated", "PayoutProcessing", "PayoutCompleted"]
    assert names(events[rejected["payoutId"]]) == ["PayoutCreated", "PayoutFailed"]
    assert names(events[late["payoutId"]]) == ["PayoutCreated", "PayoutProcessing", "PayoutCompleted"]
    processing, completed = (unpacked(e, pb.Payout) for e in events[paid["payoutId"]][1:])
    assert processing.state == pb.Payout.STATE_PROCESSING and processing.rail_reference
    assert processing.ledger_transaction_id and completed.state == pb.Payout.STATE_COMPLETED
    assert unpacked(events[rejected["payoutId"]][1], pb.Payout).failure_reason == "AC04"
    for envelopes in events.values():
        for e in envelopes:
            payout = unpacked(e, pb.Payout)
            iban = next(
                b["destination"]["iban"] for b in (paid, rejected, late) if b["payoutId"] == e.aggregate_id
            )
            # The country and the last four, nothing else of the account number.
            assert payout.destination.iban == iban[:2] + "*" * (len(iban) - 6) + iban[-4:]
            assert payout.destination.holder_name == "Ada Lovelace"
            assert (
                iban.encode() not in e.SerializeToString()
                and iban[4:-4].encode() not in e.SerializeToString()
            )
    # The API still shows the payout's owner the account they gave.
    assert gateway.get(f"/v1/payouts/{paid['payoutId']}").json()["payout"]["destination"]["iban"] == PAID
