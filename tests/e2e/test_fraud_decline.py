"""A payment the fraud rules decline, end to end through Envoy: the payer is blacklisted
(or their card is), the payment FAILS with FRAUD_DECLINED, nothing moves, and the merchant
can read the fraud verdict with its reasons on the payment."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.test_card_payments import fresh_card, pay_by_card, tokenize
from tests.e2e.test_payments_flow import CUR, create_merchant, payer
from tests.e2e.test_slice_http import balance
from tests.helpers import http_details


@pytest.fixture
def blacklist(gateway: httpx.Client) -> Iterator[Any]:
    added: list[str] = []

    def add(entry_type: str, value: str) -> None:
        reply = gateway.post(
            "/v1/blacklist",
            json={"entryType": entry_type, "value": value, "reason": "confirmed fraud in an earlier case"},
        )
        assert reply.status_code == 200, reply.text
        added.append(reply.json()["blacklistEntry"]["entryId"])

    yield add
    for entry_id in added:
        gateway.delete(f"/v1/blacklist/{entry_id}")


def _declined(gateway: httpx.Client, reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 400, reply.text
    info, _ = http_details(reply.json())
    assert info is not None and info["reason"] == "FRAUD_DECLINED"
    payment = gateway.get(f"/v1/payments/{info['metadata']['payment_id']}").json()["payment"]
    assert payment["state"] == "STATE_FAILED" and payment["failureCode"] == "FAILURE_CODE_FRAUD_DECLINED"
    assessment = payment["fraudAssessment"]
    assert assessment["decision"] == "FRAUD_DECISION_DECLINE" and assessment["riskScore"] > 0
    assert any("blacklist" in reason.lower() for reason in assessment["reasons"]), assessment
    return payment  # type: ignore[no-any-return]


def test_a_blacklisted_payer_is_declined_with_reasons_the_merchant_can_read(
    gateway: httpx.Client, blacklist
) -> None:  # type: ignore[no-untyped-def]
    shop = create_merchant(gateway)
    user_id, wallet = str(uuid.uuid4()), payer(gateway, 5_000)
    blacklist("BLACKLIST_ENTRY_TYPE_USER", user_id)
    reply = gateway.post(
        "/v1/payments",
        headers={"Idempotency-Key": str(uuid.uuid4())},
        json={
            "merchantId": shop["merchantId"],
            "payerWalletId": wallet,
            "payerUserId": user_id,
            "amount": {"amountMinor": "2500", "currency": CUR},
        },
    )
    _declined(gateway, reply)
    assert balance(gateway, wallet) == 5_000 and balance(gateway, shop["settlementWalletId"]) == 0
    held = gateway.get(f"/v1/wallets/{wallet}").json()["wallet"]
    assert held["pending"]["amountMinor"] == "0"


def test_a_blacklisted_card_is_declined_before_the_processor_sees_it(
    gateway: httpx.Client, blacklist
) -> None:  # type: ignore[no-untyped-def]
    shop = create_merchant(gateway)
    card = tokenize(gateway, fresh_card("4"))
    blacklist("BLACKLIST_ENTRY_TYPE_CARD_FINGERPRINT", card["fingerprint"])
    payment = _declined(gateway, pay_by_card(gateway, shop, card["token"], 1_000))
    assert not payment.get("processorReference")  # never authorised
    assert balance(gateway, shop["settlementWalletId"]) == 0
    # Another card of the same shop is unaffected.
    other = tokenize(gateway, fresh_card("55"))
    assert pay_by_card(gateway, shop, other["token"], 1_000).status_code == 200
