"""Card payments end to end through Envoy: the vault tokenises, the orchestrator's processor
adapter authorises and captures through the simulator's documented test cards, and card
money enters the ledger through the funding account. Each decline and the processor
timeout fail the payment with its own code and move nothing."""

from __future__ import annotations

import random
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.test_payments_flow import CUR, create_merchant
from tests.e2e.test_slice_http import balance
from tests.helpers import http_details


def fresh_card(prefix: str = "4") -> str:
    """A Luhn-valid card number nobody used before: the simulator approves it, and the
    fraud rules' per-card velocity never sees it twice across test runs on one mesh."""
    digits = prefix + "".join(random.choice("0123456789") for _ in range(15 - len(prefix)))
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return digits + str((10 - total % 10) % 10)


@pytest.fixture
def shop(gateway: httpx.Client) -> dict[str, Any]:
    return create_merchant(gateway)


def tokenize(gateway: httpx.Client, pan: str) -> dict[str, Any]:
    reply = gateway.post(
        "/v1/cards:tokenize",
        json={"pan": pan, "expiryMonth": 12, "expiryYear": 2031, "cardholderName": "Ada Lovelace"},
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["card"]  # type: ignore[no-any-return]


def pay_by_card(
    gateway: httpx.Client,
    merchant: dict[str, Any],
    token: str,
    amount: int,
    *,
    cvv: str = "123",
    manual: bool = False,
    key: str | None = None,
) -> httpx.Response:
    return gateway.post(
        "/v1/payments",
        headers={"Idempotency-Key": key or str(uuid.uuid4())},
        json={
            "merchantId": merchant["merchantId"],
            "cardToken": token,
            "cvv": cvv,
            "amount": {"amountMinor": str(amount), "currency": CUR},
            "captureMethod": "CAPTURE_METHOD_MANUAL" if manual else "CAPTURE_METHOD_AUTOMATIC",
        },
    )


def funding_balance(gateway: httpx.Client) -> int:
    from services.wallet.domain.model import SystemAccount, system_wallet_id

    reply = gateway.get(f"/v1/wallets/{system_wallet_id(SystemAccount.FUNDING, CUR)}")
    return int(reply.json()["wallet"]["balance"]["amountMinor"]) if reply.status_code == 200 else 0


def test_an_approved_card_pays_the_merchant_from_the_funding_account(gateway: httpx.Client, shop) -> None:  # type: ignore[no-untyped-def]
    pan = fresh_card("4")
    card = tokenize(gateway, pan)
    key = str(uuid.uuid4())
    reply = pay_by_card(gateway, shop, card["token"], 5_000, key=key)
    assert reply.status_code == 200, reply.text
    payment = reply.json()["payment"]
    assert payment["state"] == "STATE_CAPTURED" and payment["processorReference"].startswith("sim_auth_")
    assert payment["card"] == {
        "brand": "CARD_BRAND_VISA",
        "last4": pan[-4:],
        "expiryMonth": 12,
        "expiryYear": 2031,
    }
    assert "walletHoldId" not in payment or not payment["walletHoldId"]
    assert balance(gateway, shop["settlementWalletId"]) == 5_000 - 145
    # A retry with the same key replays: nobody is charged twice.
    again = pay_by_card(gateway, shop, card["token"], 5_000, key=key)
    assert again.status_code == 200 and again.json()["payment"]["paymentId"] == payment["paymentId"]
    assert balance(gateway, shop["settlementWalletId"]) == 5_000 - 145
    assert pan not in reply.text + again.text


@pytest.mark.parametrize(
    ("pan", "reason", "failure_code"),
    [
        ("4000000000009995", "CARD_DECLINED", "FAILURE_CODE_CARD_DECLINED"),  # insufficient funds
        ("4000000000009979", "CARD_DECLINED", "FAILURE_CODE_CARD_DECLINED"),  # stolen
        ("4000000000000069", "CARD_EXPIRED", "FAILURE_CODE_CARD_EXPIRED"),
        ("4000000000000127", "CARD_DECLINED", "FAILURE_CODE_INCORRECT_CVV"),
        ("4000000000000119", "PROCESSOR_UNAVAILABLE", "FAILURE_CODE_PROCESSOR_UNAVAILABLE"),  # times out
    ],
)
def test_each_decline_fails_the_payment_and_moves_nothing(  # type: ignore[no-untyped-def]
    gateway: httpx.Client, shop, pan: str, reason: str, failure_code: str
) -> None:
    card = tokenize(gateway, pan)
    refused = pay_by_card(gateway, shop, card["token"], 2_500)
    assert refused.status_code == 400, refused.text
    info, _ = http_details(refused.json())
    assert info is not None and info["reason"] == reason
    payment = gateway.get(f"/v1/payments/{info['metadata']['payment_id']}").json()["payment"]
    assert payment["state"] == "STATE_FAILED" and payment["failureCode"] == failure_code
    assert balance(gateway, shop["settlementWalletId"]) == 0
    assert pan not in refused.text


def test_a_card_authorization_is_captured_in_part_then_refunded(gateway: httpx.Client) -> None:
    shop = create_merchant(gateway, fee_bps=0)
    card = tokenize(gateway, fresh_card("55"))
    authorized = pay_by_card(gateway, shop, card["token"], 3_000, manual=True)
    assert authorized.status_code == 200, authorized.text
    payment = authorized.json()["payment"]
    assert payment["state"] == "STATE_AUTHORIZED" and payment["card"]["brand"] == "CARD_BRAND_MASTERCARD"
    assert balance(gateway, shop["settlementWalletId"]) == 0  # nothing moves before capture
    captured = gateway.post(
        f"/v1/payments/{payment['paymentId']}:capture",
        json={"amount": {"amountMinor": "2000", "currency": CUR}},
    )
    assert captured.status_code == 200, captured.text
    assert captured.json()["payment"]["capturedAmount"]["amountMinor"] == "2000"
    assert balance(gateway, shop["settlementWalletId"]) == 2_000
    refund = gateway.post(
        f"/v1/payments/{payment['paymentId']}/refunds",
        headers={"Idempotency-Key": str(uuid.uuid4())},
        json={"amount": {"amountMinor": "2000", "currency": CUR}, "reason": "returned"},
    )
    assert refund.status_code == 200, refund.text
    assert refund.json()["refund"]["state"] == "STATE_SUCCEEDED"
    assert balance(gateway, shop["settlementWalletId"]) == 0
    final = gateway.get(f"/v1/payments/{payment['paymentId']}").json()["payment"]
    assert final["state"] == "STATE_REFUNDED"


def test_cancelling_a_card_authorization_voids_it(gateway: httpx.Client, shop) -> None:  # type: ignore[no-untyped-def]
    card = tokenize(gateway, fresh_card("4"))
    payment = pay_by_card(gateway, shop, card["token"], 700, manual=True).json()["payment"]
    cancelled = gateway.post(f"/v1/payments/{payment['paymentId']}:cancel", json={"reason": "out of stock"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["payment"]["state"] == "STATE_CANCELLED"
    assert balance(gateway, shop["settlementWalletId"]) == 0


def test_an_unknown_card_token_is_not_found_and_creates_no_payment(gateway: httpx.Client, shop) -> None:  # type: ignore[no-untyped-def]
    key = str(uuid.uuid4())
    refused = pay_by_card(gateway, shop, str(uuid.uuid4()), 100, key=key)
    assert refused.status_code == 404, refused.text
    assert http_details(refused.json())[0]["reason"] == "CARD_NOT_FOUND"  # type: ignore[index]
