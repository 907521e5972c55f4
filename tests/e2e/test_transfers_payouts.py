"""Transfers and payouts end to end through Envoy: each one an orchestrator saga that checks
fraud and moves real money between real wallets (and, for payouts, over the simulated
payout rail to payout clearing). Idempotent on the client's id; refusals move nothing;
money is conserved to the unit.

Payout rail test accounts (services/orchestrator/adapters/payout_rail.py): DE89… paid at
once, DE62… rejected (AC04), DE35… late then paid, DE08… late then rejected (AC06).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from interpay.fraud.v1 import fraud_service_pb2 as fraud_pb
from interpay.fraud.v1.fraud_service_pb2_grpc import FraudServiceStub

from tests.e2e.test_slice_http import fund, open_wallet
from tests.helpers import http_details, poll

PAID = "DE89370400440532013000"
REJECTED = "DE62370400440532013001"
LATE = "DE35370400440532013002"
LATE_REJECTED = "DE08370400440532013003"
SETTLE_DEADLINE_SECONDS = 60


def money(amount: int, currency: str = "EUR") -> dict[str, str]:
    return {"amountMinor": str(amount), "currency": currency}


def wallet(gateway: httpx.Client, wallet_id: str) -> dict[str, Any]:
    reply = gateway.get(f"/v1/wallets/{wallet_id}")
    assert reply.status_code == 200, reply.text
    return reply.json()["wallet"]  # type: ignore[no-any-return]


def amounts(gateway: httpx.Client, wallet_id: str) -> tuple[int, int, int]:
    """(balance, available, pending) of a wallet."""
    w = wallet(gateway, wallet_id)
    return tuple(int(w[k]["amountMinor"]) for k in ("balance", "available", "pending"))  # type: ignore[return-value]


def transfer_body(source: str, destination: str, amount: int, **extra: Any) -> dict[str, Any]:
    return {
        "transferId": str(uuid.uuid4()),
        "sourceWalletId": source,
        "destinationWalletId": destination,
        "amount": money(amount),
        **extra,
    }


def payout_body(source: str, iban: str, amount: int) -> dict[str, Any]:
    return {
        "payoutId": str(uuid.uuid4()),
        "sourceWalletId": source,
        "destination": {"holderName": "Ada Lovelace", "iban": iban, "countryCode": "DE"},
        "amount": money(amount),
    }


def settled_payout(gateway: httpx.Client, payout_id: str) -> dict[str, Any]:
    """The payout once COMPLETED or FAILED (polled, with a bounded deadline)."""
    deadline = time.monotonic() + SETTLE_DEADLINE_SECONDS
    while True:
        reply = gateway.get(f"/v1/payouts/{payout_id}")
        assert reply.status_code == 200, reply.text
        payout = reply.json()["payout"]
        if payout["state"] in ("STATE_COMPLETED", "STATE_FAILED") or time.monotonic() > deadline:
            return payout  # type: ignore[no-any-return]
        time.sleep(0.5)


def user_wallet(gateway: httpx.Client, funded: int = 0, currency: str = "EUR") -> str:
    wallet_id: str = open_wallet(gateway, str(uuid.uuid4()), currency)["walletId"]
    if funded:
        fund(gateway, wallet_id, funded, currency)
    return wallet_id


@pytest.fixture
def blacklisted_user(channel: Callable[[str], grpc.Channel]) -> Iterator[str]:
    """A fresh user id on the fraud blacklist for the test's duration only."""
    fraud = FraudServiceStub(channel("fraud"))
    user_id = str(uuid.uuid4())
    entry = fraud.AddBlacklistEntry(
        fraud_pb.AddBlacklistEntryRequest(
            entry_type=fraud_pb.BLACKLIST_ENTRY_TYPE_USER, value=user_id, reason="e2e transfers test"
        )
    ).blacklist_entry
    try:
        yield user_id
    finally:
        fraud.RemoveBlacklistEntry(fraud_pb.RemoveBlacklistEntryRequest(entry_id=entry.entry_id))


# -- transfers ----------------------------------------------------------------------------------
def test_a_transfer_moves_the_money_once_and_replays(gateway: httpx.Client) -> None:
    a, b = user_wallet(gateway, 10_000), user_wallet(gateway)
    body = transfer_body(a, b, 2_500, description="rent share")
    first = gateway.post("/v1/transfers", json=body)
    assert first.status_code == 200, first.text
    transfer = first.json()["transfer"]
    assert transfer["state"] == "STATE_COMPLETED" and transfer["ledgerTransactionId"]
    again = gateway.post("/v1/transfers", json=body)
    assert again.status_code == 200 and again.json()["transfer"] == transfer
    assert amounts(gateway, a) == (7_500, 7_500, 0) and amounts(gateway, b) == (2_500, 2_500, 0)
    assert gateway.get(f"/v1/transfers/{body['transferId']}").json()["transfer"] == transfer
    listed = gateway.get("/v1/transfers", params={"walletId": b}).json()["transfers"]
    assert [t["transferId"] for t in listed] == [body["transferId"]]

    reused = gateway.post("/v1/transfers", json={**body, "amount": money(2_501)})
    assert reused.status_code == 400
    info, _ = http_details(reused.json())
    assert info is not None and info["reason"] == "IDEMPOTENCY_MISMATCH"
    assert info["metadata"]["mismatched_fields"] == "amount"
    assert amounts(gateway, a)[0] + amounts(gateway, b)[0] == 10_000  # nothing created, nothing lost


def test_insufficient_funds_fails_the_transfer_and_moves_nothing(gateway: httpx.Client) -> None:
    a, b = user_wallet(gateway, 1_000), user_wallet(gateway)
    body = transfer_body(a, b, 1_001)
    for _ in range(2):  # the retry replays the same refusal
        reply = gateway.post("/v1/transfers", json=body)
        assert reply.status_code == 400, reply.text
        info, _ = http_details(reply.json())
        assert info is not None and info["reason"] == "INSUFFICIENT_FUNDS"
        assert info["metadata"]["available_minor"] == "1000"
        assert info["metadata"]["transfer_id"] == body["transferId"]
    stored = gateway.get(f"/v1/transfers/{body['transferId']}").json()["transfer"]
    assert stored["state"] == "STATE_FAILED" and stored["failureReason"] == "INSUFFICIENT_FUNDS"
    assert amounts(gateway, a) == (1_000, 1_000, 0) and amounts(gateway, b) == (0, 0, 0)


def test_frozen_unknown_and_cross_currency_wallets_are_refused_precisely(gateway: httpx.Client) -> None:
    a, b = user_wallet(gateway, 1_000), user_wallet(gateway)
    usd = user_wallet(gateway, currency="USD")
    unknown = str(uuid.uuid4())
    cases = [
        (transfer_body(a, unknown, 10), 404, "WALLET_NOT_FOUND"),
        (transfer_body(a, usd, 10), 400, "CURRENCY_MISMATCH"),
    ]
    for body, status, reason in cases:
        reply = gateway.post("/v1/transfers", json=body)
        assert reply.status_code == status, reply.text
        assert http_details(reply.json())[0]["reason"] == reason  # type: ignore[index]
        stored = gateway.get(f"/v1/transfers/{body['transferId']}").json()["transfer"]
        assert stored["state"] == "STATE_FAILED" and stored["failureReason"] == reason
    frozen = gateway.post(f"/v1/wallets/{a}:freeze", json={"reason": "e2e test"})
    assert frozen.status_code == 200, frozen.text
    reply = gateway.post("/v1/transfers", json=transfer_body(a, b, 10))
    assert reply.status_code == 400
    assert http_details(reply.json())[0]["reason"] == "WALLET_NOT_ACTIVE"  # type: ignore[index]
    reply = gateway.post("/v1/payouts", json=payout_body(a, PAID, 10))
    assert reply.status_code == 400
    assert http_details(reply.json())[0]["reason"] == "WALLET_NOT_ACTIVE"  # type: ignore[index]
    assert amounts(gateway, a) == (1_000, 1_000, 0)
    assert amounts(gateway, b)[0] == amounts(gateway, usd)[0] == 0


def test_a_fraud_decline_fails_the_transfer_with_its_reasons(
    gateway: httpx.Client, blacklisted_user: str
) -> None:
    source = open_wallet(gateway, blacklisted_user)["walletId"]
    fund(gateway, source, 5_000)
    b = user_wallet(gateway)
    body = transfer_body(source, b, 100)
    reply = gateway.post("/v1/transfers", json=body)
    assert reply.status_code == 400, reply.text
    info, _ = http_details(reply.json())
    assert info is not None and info["reason"] == "FRAUD_DECLINED"
    assert info["metadata"]["decision"] == "DECLINE" and info["metadata"]["check_id"]
    assert "blacklist" in reply.json()["message"].lower()
    stored = gateway.get(f"/v1/transfers/{body['transferId']}").json()["transfer"]
    assert stored["state"] == "STATE_FAILED" and stored["failureReason"] == "FRAUD_DECLINED"
    # Payouts are checked too.
    payout = payout_body(source, PAID, 100)
    reply = gateway.post("/v1/payouts", json=payout)
    assert reply.status_code == 400
    assert http_details(reply.json())[0]["reason"] == "FRAUD_DECLINED"  # type: ignore[index]
    assert amounts(gateway, source) == (5_000, 5_000, 0) and amounts(gateway, b)[0] == 0


# -- payouts ------------------------------------------------------------------------------------
def _clearing_entry(gateway: httpx.Client, source: str, ledger_transaction_id: str) -> dict[str, Any]:
    """The source wallet's ledger entry of the payout, with the wallet it paid."""
    entries = gateway.get(f"/v1/wallets/{source}/transactions").json()["transactions"]
    return next(e for e in entries if e["transactionId"] == ledger_transaction_id)  # type: ignore[no-any-return]


def test_a_payout_moves_the_funds_to_payout_clearing_once(gateway: httpx.Client) -> None:
    source = user_wallet(gateway, 10_000)
    body = payout_body(source, PAID, 4_000)
    first = gateway.post("/v1/payouts", json=body)
    assert first.status_code == 200, first.text
    payout = first.json()["payout"]
    assert payout["state"] in ("STATE_PROCESSING", "STATE_COMPLETED"), payout
    assert payout["railReference"] and payout["ledgerTransactionId"]
    payout = settled_payout(gateway, body["payoutId"])
    assert payout["state"] == "STATE_COMPLETED", payout
    again = gateway.post("/v1/payouts", json=body)
    assert again.status_code == 200 and again.json()["payout"] == payout
    assert amounts(gateway, source) == (6_000, 6_000, 0)  # debited, the hold gone

    entry = _clearing_entry(gateway, source, payout["ledgerTransactionId"])
    assert entry["amount"] == money(-4_000)
    clearing = wallet(gateway, entry["counterpartyWalletId"])
    assert clearing["ownerType"] == "OWNER_TYPE_SYSTEM" and "PAYOUT_CLEARING" in clearing["ownerId"].upper()

    reused = gateway.post("/v1/payouts", json={**body, "amount": money(4_001)})
    assert reused.status_code == 400
    info, _ = http_details(reused.json())
    assert info is not None and info["reason"] == "IDEMPOTENCY_MISMATCH"
    assert info["metadata"]["mismatched_fields"] == "amount"
    listed = gateway.get("/v1/payouts", params={"walletId": source}).json()["payouts"]
    assert [p["payoutId"] for p in listed] == [body["payoutId"]]


def test_a_payout_the_rail_rejects_releases_the_hold(gateway: httpx.Client) -> None:
    source = user_wallet(gateway, 10_000)
    body = payout_body(source, REJECTED, 4_000)
    for _ in range(2):  # the retry replays the same refusal
        reply = gateway.post("/v1/payouts", json=body)
        assert reply.status_code == 400, reply.text
        info, _ = http_details(reply.json())
        assert info is not None and info["reason"] == "TRANSFER_FAILED"
        assert info["metadata"]["failure_reason"] == "AC04"
    payout = gateway.get(f"/v1/payouts/{body['payoutId']}").json()["payout"]
    assert payout["state"] == "STATE_FAILED" and payout["failureReason"] == "AC04"
    assert not payout.get("ledgerTransactionId")
    assert amounts(gateway, source) == (10_000, 10_000, 0)


def test_insufficient_funds_fails_the_payout(gateway: httpx.Client) -> None:
    source = user_wallet(gateway, 500)
    reply = gateway.post("/v1/payouts", json=payout_body(source, PAID, 501))
    assert reply.status_code == 400, reply.text
    info, _ = http_details(reply.json())
    assert info is not None and info["reason"] == "INSUFFICIENT_FUNDS"
    assert info["metadata"]["available_minor"] == "500"
    assert amounts(gateway, source) == (500, 500, 0)


@pytest.mark.parametrize(
    ("iban", "outcome", "reason", "left"),
    [(LATE, "STATE_COMPLETED", "", 7_000), (LATE_REJECTED, "STATE_FAILED", "AC06", 10_000)],
)
def test_a_late_rail_answer_ends_terminal_and_consistent(
    gateway: httpx.Client, iban: str, outcome: str, reason: str, left: int
) -> None:
    source = user_wallet(gateway, 10_000)
    body = payout_body(source, iban, 3_000)
    reply = gateway.post("/v1/payouts", json=body)
    if reply.status_code == 409:  # the rail did not answer in time; the saga carries on
        assert http_details(reply.json())[0]["reason"] == "REQUEST_IN_PROGRESS"  # type: ignore[index]
    else:
        assert reply.status_code in (200, 400), reply.text
    # While the rail has not decided, the funds are held, never both held and gone.
    balance, available, pending = amounts(gateway, source)
    assert balance == available + pending and balance in (10_000, 7_000)

    payout = settled_payout(gateway, body["payoutId"])
    assert payout["state"] == outcome, payout
    assert payout["failureReason"] == reason
    assert amounts(gateway, source) == (left, left, 0)
    if outcome == "STATE_COMPLETED":
        assert _clearing_entry(gateway, source, payout["ledgerTransactionId"])["amount"] == money(-3_000)
    # A retry of the create call now answers with the outcome.
    again = gateway.post("/v1/payouts", json=body)
    assert again.status_code == (200 if outcome == "STATE_COMPLETED" else 400), again.text


@pytest.mark.parametrize(
    ("iban", "template", "words"),
    [
        (PAID, "payout_completed", "40.00 EUR was paid out to the account ending 3000."),
        (REJECTED, "payout_failed", "(AC04)"),
    ],
)
def test_the_wallet_owner_is_told_how_a_payout_ended(
    gateway: httpx.Client, iban: str, template: str, words: str
) -> None:
    owner = str(uuid.uuid4())
    source: str = open_wallet(gateway, owner)["walletId"]
    fund(gateway, source, 10_000)
    body = payout_body(source, iban, 4_000)
    gateway.post("/v1/payouts", json=body)
    assert settled_payout(gateway, body["payoutId"])["state"] in ("STATE_COMPLETED", "STATE_FAILED")

    def told() -> list[dict[str, Any]]:
        listed = gateway.get(f"/v1/users/{owner}/notifications")
        assert listed.status_code == 200, listed.text
        return [n for n in listed.json().get("notifications", []) if n["template"].startswith("payout_")]

    notes = poll(told, 60, "the payout's notification")
    assert [n["template"] for n in notes] == [template]
    assert words in notes[0]["body"] and "DE89" not in notes[0]["body"] and "DE62" not in notes[0]["body"]
