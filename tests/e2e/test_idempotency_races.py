"""Twenty concurrent requests with one Idempotency-Key, again and again: exactly one
payment and one debit each time; every request either gets the payment or a clear
REQUEST_IN_PROGRESS conflict, and every retry after completion gets the identical answer."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.e2e.test_payments_flow import CUR, create_merchant, payer
from tests.e2e.test_slice_http import balance
from tests.helpers import http_details

CONCURRENT = 20
ROUNDS = 5


def test_one_key_many_concurrent_requests_one_effect(gateway: httpx.Client) -> None:
    shop = create_merchant(gateway, fee_bps=0)
    wallet = payer(gateway, ROUNDS * 1_000)
    base_url, headers = str(gateway.base_url), dict(gateway.headers)
    for round_ in range(ROUNDS):
        key = str(uuid.uuid4())
        body = {
            "merchantId": shop["merchantId"],
            "payerWalletId": wallet,
            "amount": {"amountMinor": "1000", "currency": CUR},
        }

        def send(key: str, body: dict[str, object]) -> httpx.Response:
            with httpx.Client(base_url=base_url, timeout=30, headers=headers) as client:
                return client.post("/v1/payments", headers={"Idempotency-Key": key}, json=body)

        with ThreadPoolExecutor(CONCURRENT) as pool:
            replies = list(pool.map(send, [key] * CONCURRENT, [body] * CONCURRENT))
        ok = [r for r in replies if r.status_code == 200]
        conflicts = [r for r in replies if r.status_code == 409]
        assert len(ok) + len(conflicts) == CONCURRENT, [r.text for r in replies]
        assert ok, "at least the request that ran must answer with the payment"
        for conflict in conflicts:
            assert http_details(conflict.json())[0]["reason"] == "REQUEST_IN_PROGRESS"  # type: ignore[index]
        assert len({r.json()["payment"]["paymentId"] for r in ok}) == 1
        # Exactly one debit per round, however many requests raced.
        assert balance(gateway, wallet) == ROUNDS * 1_000 - (round_ + 1) * 1_000
        assert balance(gateway, shop["settlementWalletId"]) == (round_ + 1) * 1_000
        # After completion every retry gets the identical response.
        first = gateway.post("/v1/payments", headers={"Idempotency-Key": key}, json=body)
        for _ in range(3):
            again = gateway.post("/v1/payments", headers={"Idempotency-Key": key}, json=body)
            assert (again.status_code, again.json()) == (first.status_code, first.json())
        assert first.json()["payment"] == ok[0].json()["payment"]
