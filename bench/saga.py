"""End-to-end payment sagas through Envoy: POST /v1/payments (automatic capture, wallet
payer) runs fraud → merchant → hold → capture → fee across payments, orchestrator, fraud,
merchants and wallet, each step persisted by the orchestrator.

    python -m bench.saga --profile bench --seconds 10

Two measurements:
1. Closed loop (the capacity): `level` clients, each sending its next payment when the
   previous one answered, at each level of a small sweep; the best throughput is the
   highest sustainable rate.
2. Open model (the latency under load): payments arrive at a fixed rate, 70% of that best
   throughput, whether or not earlier ones have answered; each one's latency counts from
   when it was due to be sent, so a stall shows up as latency instead of slowing the
   arrivals (no coordinated omission). Target: p99 ≤ 10 × p50 with errors < 0.1%.

Every payment has its own Idempotency-Key and its own payer wallet slot. The client does
what the API asks: an answer of 409 REQUEST_IN_PROGRESS is retried with the same key until
the payment is settled, and the latency runs to that final answer; only a payment that is
refused, or still running after ~40 s of retries, counts as an error. Afterwards the
merchant must hold exactly the captured amounts minus fees (checked through the API).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from typing import Any

import httpx

from scripts.operator_token import mint
from services.framework.topology import PROFILES, Profile

CURRENCY = "XTS"  # ISO 4217's code reserved for testing
AMOUNT = 100  # minor units per payment
FEE_BPS = 0  # the merchant's balance then equals the sum of captures exactly
FUND = 1_000_000_000
IN_PROGRESS_RETRIES = 40  # about 40 s of backing off: a payment still running after that is an error


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    if not ordered:
        return {"n": 0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000, 2)

    return {"n": len(ordered), "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": pct(100)}


class Payments:
    def __init__(self, http: httpx.AsyncClient, merchant_id: str, payers: list[str]) -> None:
        self.http = http
        self.merchant_id = merchant_id
        self.payers = payers
        self.sent = 0
        self.captured = 0
        self.in_progress_retries = 0
        self.errors: Counter[str] = Counter()
        self.samples: list[str] = []

    async def one(self) -> bool:
        """One payment, as a client following the API does it: an answer of 409
        REQUEST_IN_PROGRESS (the saga outlived the call) is retried with the same
        Idempotency-Key until the payment is settled; its latency runs to that answer."""
        payer = self.payers[self.sent % len(self.payers)]
        self.sent += 1
        key = str(uuid.uuid4())
        body = {
            "merchantId": self.merchant_id,
            "payerWalletId": payer,
            "amount": {"amountMinor": str(AMOUNT), "currency": CURRENCY},
        }
        for attempt in range(IN_PROGRESS_RETRIES + 1):
            try:
                reply = await self.http.post("/v1/payments", headers={"Idempotency-Key": key}, json=body)
            except httpx.HTTPError as exc:
                self.errors[type(exc).__name__] += 1
                return False
            if reply.status_code != 409 or attempt == IN_PROGRESS_RETRIES:
                break
            self.in_progress_retries += 1
            await asyncio.sleep(0.05 * (attempt + 1))
        if reply.status_code == 200 and reply.json()["payment"]["state"] == "STATE_CAPTURED":
            self.captured += 1
            return True
        self.errors[f"HTTP {reply.status_code}"] += 1
        if len(self.samples) < 5:
            self.samples.append(reply.text[:300])
        return False


async def _setup(http: httpx.AsyncClient, n_payers: int) -> tuple[str, list[str]]:
    created = await http.post(
        "/v1/merchants",
        json={
            "legalName": "Bench Shop Ltd",
            "displayName": "Bench Shop",
            "contactEmail": "bench@shop.example",
            "countryCode": "DE",
            "settlementCurrency": CURRENCY,
            "feeBps": FEE_BPS,
            "payoutAccount": {
                "holderName": "Bench Shop Ltd",
                "iban": "DE89370400440532013000",
                "countryCode": "DE",
            },
        },
    )
    created.raise_for_status()
    merchant_id = created.json()["merchant"]["merchantId"]
    activated = await http.post(f"/v1/merchants/{merchant_id}:activate", json={})
    activated.raise_for_status()
    gate = asyncio.Semaphore(8)

    async def payer() -> str:
        async with gate:
            wallet = await http.post(
                "/v1/wallets",
                json={"ownerType": "OWNER_TYPE_USER", "ownerId": str(uuid.uuid4()), "currency": CURRENCY},
            )
            wallet.raise_for_status()
            wallet_id = str(wallet.json()["wallet"]["walletId"])
            funded = await http.post(
                f"/v1/wallets/{wallet_id}:fund",
                json={
                    "amount": {"amountMinor": str(FUND), "currency": CURRENCY},
                    "reference": str(uuid.uuid4()),
                },
            )
            funded.raise_for_status()
            return wallet_id

    return merchant_id, list(await asyncio.gather(*(payer() for _ in range(n_payers))))


async def _closed(payments: Payments, level: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    before = payments.captured

    async def lane() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            if await payments.one():
                latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(level)))
    elapsed = time.perf_counter() - began
    return {
        "in_flight": level,
        "throughput_per_s": round((payments.captured - before) / elapsed, 1),
        "latency": _summary(latencies),
    }


async def _open(payments: Payments, rate: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    outcomes: Counter[bool] = Counter()
    interval = 1.0 / rate
    start = time.perf_counter()
    n = int(rate * seconds)

    async def arrival(due: float) -> None:
        ok = await payments.one()
        outcomes[ok] += 1
        if ok:
            latencies.append(time.perf_counter() - due)

    tasks = []
    for i in range(n):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(arrival(due)))
    await asyncio.gather(*tasks)
    summary = _summary(latencies)
    errors = outcomes[False]
    return {
        "rate_per_s": round(rate, 1),
        "seconds": seconds,
        "sent": n,
        "errors": errors,
        "error_rate": round(errors / n, 5) if n else 0.0,
        "latency": summary,
        "p99_over_p50": round(summary["p99_ms"] / summary["p50_ms"], 2) if summary["p50_ms"] else None,
    }


async def run(
    profile: Profile | str, seconds: float, levels: tuple[int, ...] = (4, 8, 16), open_share: float = 0.7
) -> dict[str, Any]:
    if isinstance(profile, str):
        profile = PROFILES[profile]
    limits = httpx.Limits(max_connections=max(levels) * 4, max_keepalive_connections=max(levels) * 4)
    # The gateway needs a credential: the bench acts as an operator (scripts/operator_token.py).
    headers = {"authorization": f"Bearer {mint(profile.name)}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{profile.gateway_port}", timeout=30, limits=limits, headers=headers
    ) as http:
        merchant_id, payers = await _setup(http, 200)
        payments = Payments(http, merchant_id, payers)
        for _ in range(20):  # warm-up: connections, caches, prepared plans
            await payments.one()
        closed = [await _closed(payments, level, seconds) for level in levels]
        best = max(closed, key=lambda r: r["throughput_per_s"])
        opened = await _open(payments, max(best["throughput_per_s"] * open_share, 1.0), seconds)
        merchant = (await http.get(f"/v1/merchants/{merchant_id}")).json()["merchant"]
        settled = await http.get(f"/v1/wallets/{merchant['settlementWalletId']}")
        merchant_balance = int(settled.json()["wallet"]["balance"]["amountMinor"])
    return {
        "closed_loop": closed,
        "best": best,
        "open_model": opened,
        "payments_sent": payments.sent,
        "payments_captured": payments.captured,
        "errors_by_kind": dict(payments.errors),
        "in_progress_retries": payments.in_progress_retries,
        "error_samples": payments.samples,
        "merchant_balance_matches_captures": merchant_balance == payments.captured * AMOUNT,
        "open_model_p99_le_10x_p50": bool(
            opened["p99_over_p50"] is not None and opened["p99_over_p50"] <= 10
        ),
        "open_model_errors_lt_0.1pct": opened["error_rate"] < 0.001,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="bench", choices=sorted(PROFILES))
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.profile, args.seconds)), indent=2))


if __name__ == "__main__":
    main()
