"""Chaos under load: payments keep arriving through Envoy while the orchestrator and the
wallet are SIGKILLed, PostgreSQL is restarted, Redis is stopped for a while and Kafka is
stopped for a while (all on the test mesh, through its supervisor). Once the faults stop,
every payment ends terminal, nobody is charged twice, nothing stays held, the merchant
is paid exactly what was captured minus fees, the ledger reconciles and each currency
still sums to zero over all wallets, every saga is terminal, and no event is lost: every
captured payment reaches the merchants service's settlement lines through Kafka.

Clients behave as the API asks: each payment has its own Idempotency-Key and is retried
with it (on a dropped connection, 409 REQUEST_IN_PROGRESS, or 503) until it has an answer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from services.framework.topology import Profile
from tests.conftest import ROOT, database_url
from tests.e2e.test_payments_flow import CUR, create_merchant, payer
from tests.e2e.test_slice_http import balance

WORKERS = 4
MAX_PAYMENTS_PER_WORKER = 80  # a bound; each client stops when the faults are over
PAUSE_BETWEEN_PAYMENTS = 0.3
AMOUNT = 700
FUNDS = 1_000_000
TERMINAL = {"STATE_CAPTURED", "STATE_FAILED", "STATE_CANCELLED"}


def supervisor(profile: Profile) -> Callable[..., str]:
    conf = ROOT / ".data" / profile.name / "supervisord.conf"

    def ctl(*args: str) -> str:
        return subprocess.run(
            [str(ROOT / ".venv" / "bin" / "supervisorctl"), "-c", str(conf), *args],
            text=True,
            capture_output=True,
            timeout=120,
        ).stdout

    return ctl


def kill9(ctl: Callable[..., str], program: str) -> None:
    pid = int(ctl("pid", program).strip() or 0)
    if pid > 0:
        os.kill(pid, signal.SIGKILL)  # supervisord restarts it


def wait_running(ctl: Callable[..., str], program: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while "RUNNING" not in ctl("status", program):
        if time.monotonic() > deadline:
            pytest.fail(f"{program} did not come back")
        time.sleep(0.5)


class Client(threading.Thread):
    """One payer sending its payments one after the other, each until it has an answer."""

    def __init__(
        self, base_url: str, headers: dict[str, str], merchant_id: str, wallet_id: str, stop: threading.Event
    ) -> None:
        super().__init__(daemon=True)
        self.stop = stop
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=30)
        self.merchant_id, self.wallet_id = merchant_id, wallet_id
        self.payment_ids: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        for _ in range(MAX_PAYMENTS_PER_WORKER):
            if self.stop.is_set():
                break
            payment_id = self._pay_once(str(uuid.uuid4()))
            if payment_id:
                self.payment_ids.append(payment_id)
            time.sleep(PAUSE_BETWEEN_PAYMENTS)
        self.http.close()

    def _pay_once(self, key: str) -> str:
        body = {
            "merchantId": self.merchant_id,
            "payerWalletId": self.wallet_id,
            "amount": {"amountMinor": str(AMOUNT), "currency": CUR},
        }
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                reply = self.http.post("/v1/payments", headers={"Idempotency-Key": key}, json=body)
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if reply.status_code == 200:
                return str(reply.json()["payment"]["paymentId"])
            details = (
                reply.json().get("details", [])
                if reply.headers.get("content-type", "").startswith("application/json")
                else []
            )
            named = [d.get("metadata", {}).get("payment_id") for d in details if isinstance(d, dict)]
            if reply.status_code in (400, 402) and any(named):
                return str(next(i for i in named if i))  # refused, but the payment exists
            if reply.status_code not in (409, 500, 502, 503, 504):
                self.failures.append(f"{reply.status_code} {reply.text[:300]}")
                return ""
            time.sleep(0.5)
        self.failures.append(f"no answer for Idempotency-Key {key}")
        return ""


def test_money_and_events_survive_kills_restarts_and_outages(
    profile: Profile, gateway: httpx.Client, mesh_secrets: dict[str, str]
) -> None:
    ctl = supervisor(profile)
    shop = create_merchant(gateway)
    merchant_before = balance(gateway, shop["settlementWalletId"])
    wallets = [payer(gateway, FUNDS) for _ in range(WORKERS)]
    faults_over = threading.Event()
    clients = [
        Client(str(gateway.base_url), dict(gateway.headers), shop["merchantId"], w, faults_over)
        for w in wallets
    ]
    for client in clients:
        client.start()
    try:
        time.sleep(1.5)
        kill9(ctl, "orchestrator")
        time.sleep(2)
        kill9(ctl, "wallet")
        time.sleep(2)
        ctl("restart", "postgres")
        time.sleep(3)
        ctl("stop", "redis")
        time.sleep(5)
        ctl("start", "redis")
        ctl("stop", "kafka")
        time.sleep(8)
        ctl("start", "kafka")
        time.sleep(2)
    finally:  # whatever happened, the mesh is whole again for the tests after this one
        for program in ("postgres", "redis", "kafka", "orchestrator", "wallet"):
            if "RUNNING" not in ctl("status", program):
                ctl("start", program)
            wait_running(ctl, program)
        faults_over.set()
    for client in clients:
        client.join(timeout=300)
    assert not any(c.is_alive() for c in clients), "a client never got its answers"
    assert [f for c in clients for f in c.failures] == []

    # Every payment terminal (a read may still meet a service restarting: retried).
    payments: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 120
    pending = [p for c in clients for p in c.payment_ids]
    assert len(pending) >= 3 * WORKERS, "the load did not last through the faults"
    while pending and time.monotonic() < deadline:
        for payment_id in list(pending):
            try:
                reply = gateway.get(f"/v1/payments/{payment_id}")
            except httpx.TransportError:
                continue
            if reply.status_code == 200 and reply.json()["payment"]["state"] in TERMINAL:
                payments[payment_id] = reply.json()["payment"]
                pending.remove(payment_id)
        time.sleep(0.5)
    assert not pending, f"not terminal: {pending}"

    def minor(payment: dict[str, Any], field: str) -> int:
        return int(payment.get(field, {}).get("amountMinor", 0))

    captured = [p for p in payments.values() if p["state"] == "STATE_CAPTURED"]
    assert captured, "chaos left no payment captured at all"
    print(f"{len(payments)} payments, {len(captured)} captured")  # shown with -s
    # Each payer charged exactly what was captured from it, nothing left held.
    for client, wallet_id in zip(clients, wallets, strict=True):
        taken = sum(minor(payments[p], "capturedAmount") for p in client.payment_ids)
        wallet = gateway.get(f"/v1/wallets/{wallet_id}").json()["wallet"]
        assert int(wallet["balance"]["amountMinor"]) == FUNDS - taken
        assert int(wallet.get("pending", {}).get("amountMinor", 0)) == 0
    # The merchant paid exactly the captures minus their fees.
    owed = sum(minor(p, "capturedAmount") - minor(p, "feeAmount") for p in captured)
    assert balance(gateway, shop["settlementWalletId"]) - merchant_before == owed

    reconciled = gateway.post("/v1/ledger:reconcile", json={})
    assert reconciled.status_code == 200, reconciled.text
    report = reconciled.json()
    assert not report.get("mismatchedWalletIds") and not report.get("unbalancedTransactionIds"), report
    with psycopg.connect(database_url(profile, mesh_secrets, "wallet")) as conn:
        sums = conn.execute("SELECT currency, sum(balance) FROM wallets GROUP BY currency").fetchall()
    assert all(total == 0 for _, total in sums), sums
    with psycopg.connect(database_url(profile, mesh_secrets, "orchestrator")) as conn:
        open_sagas = conn.execute(
            "SELECT saga_id, state FROM sagas WHERE reference_id = ANY(%s) "
            "AND state NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED')",
            ([uuid.UUID(p) for p in payments],),
        ).fetchall()
    assert open_sagas == []

    # No event lost: every capture reaches the merchants' settlement lines through Kafka.
    def lines() -> set[str]:
        with psycopg.connect(database_url(profile, mesh_secrets, "merchants")) as conn:
            rows = conn.execute(
                "SELECT payment_id FROM settlement_lines WHERE merchant_id = %s AND kind = 'CAPTURE'",
                (uuid.UUID(shop["merchantId"]),),
            ).fetchall()
        return {str(r[0]) for r in rows}

    deadline = time.monotonic() + 120
    while lines() != {p["paymentId"] for p in captured} and time.monotonic() < deadline:
        time.sleep(1)
    assert lines() == {p["paymentId"] for p in captured}


def test_a_postgres_restart_costs_no_request_an_error(
    profile: Profile, gateway: httpx.Client, mesh_secrets: dict[str, str]
) -> None:
    """Every service's pool holds connections that die with the server; the pool tests a
    connection before lending it, so the first requests after the restart succeed."""
    ctl = supervisor(profile)
    shop = create_merchant(gateway)
    wallet = payer(gateway, 100_000)

    def pay_at_once(count: int) -> list[httpx.Response]:
        """`count` payments at the same time, so each service lends several connections."""

        def pay(_: int) -> httpx.Response:
            with httpx.Client(base_url=str(gateway.base_url), headers=dict(gateway.headers), timeout=30) as c:
                return c.post(
                    "/v1/payments",
                    headers={"Idempotency-Key": str(uuid.uuid4())},
                    json={
                        "merchantId": shop["merchantId"],
                        "payerWalletId": wallet,
                        "amount": {"amountMinor": "100", "currency": CUR},
                    },
                )

        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(pay, range(count)))

    assert all(r.status_code == 200 for r in pay_at_once(8))  # the pools now hold several connections
    ctl("restart", "postgres")
    wait_running(ctl, "postgres")
    deadline = time.monotonic() + 60
    while True:  # the server accepts connections again
        try:
            psycopg.connect(database_url(profile, mesh_secrets, "wallet"), connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    # No retries: every request must succeed at its first attempt.
    replies = pay_at_once(8)
    assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies if r.status_code != 200]
    assert balance(gateway, wallet) == 100_000 - 16 * 100
