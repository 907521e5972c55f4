"""Payments end to end through Envoy: the orchestrator's sagas moving real money between
real wallets, with the merchant's fee, partial captures, cancels, refunds, idempotency
keys, and refusals that move nothing."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.test_slice_http import balance, fund, open_wallet
from tests.helpers import http_details

CUR = "EUR"


def create_merchant(gateway: httpx.Client, fee_bps: int = 290) -> dict[str, Any]:
    reply = gateway.post(
        "/v1/merchants",
        json={
            "legalName": "Shop GmbH",
            "displayName": "Shop",
            "contactEmail": "ops@shop.example",
            "countryCode": "DE",
            "settlementCurrency": CUR,
            "feeBps": fee_bps,
            "payoutAccount": {
                "holderName": "Shop GmbH",
                "iban": "DE89370400440532013000",
                "countryCode": "DE",
            },
        },
    )
    assert reply.status_code == 200, reply.text
    merchant = reply.json()["merchant"]
    activated = gateway.post(f"/v1/merchants/{merchant['merchantId']}:activate", json={})
    assert activated.status_code == 200, activated.text
    return activated.json()["merchant"]  # type: ignore[no-any-return]


@pytest.fixture
def shop(gateway: httpx.Client) -> dict[str, Any]:
    return create_merchant(gateway)


def pay(
    gateway: httpx.Client,
    merchant: dict[str, Any],
    wallet_id: str,
    amount: int,
    *,
    key: str | None = None,
    manual: bool = False,
    expect: int = 200,
) -> dict[str, Any]:
    reply = gateway.post(
        "/v1/payments",
        headers={"Idempotency-Key": key or str(uuid.uuid4())},
        json={
            "merchantId": merchant["merchantId"],
            "payerWalletId": wallet_id,
            "amount": {"amountMinor": str(amount), "currency": CUR},
            "captureMethod": "CAPTURE_METHOD_MANUAL" if manual else "CAPTURE_METHOD_AUTOMATIC",
            "description": "order 42",
        },
    )
    assert reply.status_code == expect, reply.text
    return reply.json()  # type: ignore[no-any-return]


def payer(gateway: httpx.Client, funds: int) -> str:
    wallet = open_wallet(gateway, str(uuid.uuid4()), CUR)
    fund(gateway, wallet["walletId"], funds, CUR)
    return wallet["walletId"]  # type: ignore[no-any-return]


def fees_balance(gateway: httpx.Client) -> int:
    # The fees account is a system wallet; its id is fixed per currency (see the wallet domain).
    from services.wallet.domain.model import SystemAccount, system_wallet_id

    reply = gateway.get(f"/v1/wallets/{system_wallet_id(SystemAccount.FEES, CUR)}")
    return int(reply.json()["wallet"]["balance"]["amountMinor"]) if reply.status_code == 200 else 0


def test_an_automatic_payment_moves_money_to_the_merchant_minus_the_fee(gateway: httpx.Client, shop) -> None:  # type: ignore[no-untyped-def]
    wallet = payer(gateway, 10_000)
    fees_before = fees_balance(gateway)
    payment = pay(gateway, shop, wallet, 4_000)["payment"]
    assert payment["state"] == "STATE_CAPTURED"
    assert payment["capturedAmount"]["amountMinor"] == "4000" and payment["feeAmount"]["amountMinor"] == "116"
    assert balance(gateway, wallet) == 6_000
    assert balance(gateway, shop["settlementWalletId"]) == 4_000 - 116
    assert fees_balance(gateway) - fees_before == 116
    history = gateway.get(f"/v1/payments/{payment['paymentId']}/transactions").json()["transactions"]
    assert [(h["fromState"], h["toState"]) for h in history] == [
        ("STATE_INITIATED", "STATE_PENDING"),
        ("STATE_PENDING", "STATE_AUTHORIZED"),
        ("STATE_AUTHORIZED", "STATE_CAPTURED"),
    ]


def test_the_idempotency_key_replays_and_refuses_a_different_request(gateway: httpx.Client, shop) -> None:  # type: ignore[no-untyped-def]
    wallet, key = payer(gateway, 10_000), str(uuid.uuid4())
    first = pay(gateway, shop, wallet, 1_000, key=key)["payment"]
    again = pay(gateway, shop, wallet, 1_000, key=key)["payment"]
    assert again["paymentId"] == first["paymentId"] and balance(gateway, wallet) == 9_000
    refused = pay(gateway, shop, wallet, 1_001, key=key, expect=400)
    assert http_details(refused)[0]["reason"] == "IDEMPOTENCY_MISMATCH"  # type: ignore[index]
    assert balance(gateway, wallet) == 9_000


def test_insufficient_funds_fails_the_payment_and_moves_nothing(gateway: httpx.Client, shop) -> None:  # type: ignore[no-untyped-def]
    wallet, key = payer(gateway, 500), str(uuid.uuid4())
    refused = pay(gateway, shop, wallet, 501, key=key, expect=400)
    info, _ = http_details(refused)
    assert info is not None and info["reason"] == "INSUFFICIENT_FUNDS"
    payment_id = info["metadata"]["payment_id"]
    payment = gateway.get(f"/v1/payments/{payment_id}").json()["payment"]
    assert payment["state"] == "STATE_FAILED" and payment["failureCode"] == "FAILURE_CODE_INSUFFICIENT_FUNDS"
    assert balance(gateway, wallet) == 500 and balance(gateway, shop["settlementWalletId"]) == 0
    replay = pay(gateway, shop, wallet, 501, key=key, expect=400)  # the same failure, replayed
    assert http_details(replay)[0]["metadata"]["payment_id"] == payment_id  # type: ignore[index]


def test_a_manual_payment_is_authorized_then_partially_captured(gateway: httpx.Client, shop) -> None:  # type: ignore[no-untyped-def]
    wallet = payer(gateway, 10_000)
    payment = pay(gateway, shop, wallet, 3_000, manual=True)["payment"]
    assert payment["state"] == "STATE_AUTHORIZED" and payment["walletHoldId"]
    held = gateway.get(f"/v1/wallets/{wallet}").json()["wallet"]
    assert (held["available"]["amountMinor"], held["pending"]["amountMinor"]) == ("7000", "3000")
    captured = gateway.post(
        f"/v1/payments/{payment['paymentId']}:capture",
        json={"amount": {"amountMinor": "2000", "currency": CUR}},
    )
    assert captured.status_code == 200, captured.text
    assert captured.json()["payment"]["state"] == "STATE_CAPTURED"
    after = gateway.get(f"/v1/wallets/{wallet}").json()["wallet"]
    assert (after["available"]["amountMinor"], after["pending"]["amountMinor"]) == ("8000", "0")
    again = gateway.post(f"/v1/payments/{payment['paymentId']}:capture", json={})
    assert again.status_code == 400 and "CAPTURED" in again.json()["message"]


def test_cancelling_an_authorization_releases_the_hold(gateway: httpx.Client, shop) -> None:  # type: ignore[no-untyped-def]
    wallet = payer(gateway, 1_000)
    payment = pay(gateway, shop, wallet, 1_000, manual=True)["payment"]
    cancelled = gateway.post(
        f"/v1/payments/{payment['paymentId']}:cancel", json={"reason": "customer changed mind"}
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["payment"]["state"] == "STATE_CANCELLED"
    assert gateway.get(f"/v1/wallets/{wallet}").json()["wallet"]["available"]["amountMinor"] == "1000"


def test_partial_refunds_up_to_the_captured_amount(gateway: httpx.Client) -> None:
    shop = create_merchant(gateway, fee_bps=0)  # refunds come out of the merchant's balance
    wallet = payer(gateway, 5_000)
    payment = pay(gateway, shop, wallet, 2_000)["payment"]
    path = f"/v1/payments/{payment['paymentId']}/refunds"

    def refund(amount: int) -> httpx.Response:
        return gateway.post(
            path,
            headers={"Idempotency-Key": str(uuid.uuid4())},
            json={"amount": {"amountMinor": str(amount), "currency": CUR}, "reason": "returned"},
        )

    first = refund(500)
    assert first.status_code == 200, first.text
    assert first.json()["refund"]["state"] == "STATE_SUCCEEDED"
    assert (
        gateway.get(f"/v1/payments/{payment['paymentId']}").json()["payment"]["state"]
        == "STATE_PARTIALLY_REFUNDED"
    )
    too_much = refund(1_501)
    assert (
        too_much.status_code == 400
        and http_details(too_much.json())[0]["reason"] == "REFUND_EXCEEDS_CAPTURED"
    )  # type: ignore[index]
    assert refund(1_500).status_code == 200
    final = gateway.get(f"/v1/payments/{payment['paymentId']}").json()["payment"]
    assert final["state"] == "STATE_REFUNDED" and final["refundedAmount"]["amountMinor"] == "2000"
    assert balance(gateway, wallet) == 5_000
    assert len(gateway.get(path).json()["refunds"]) == 2
