"""Daily settlements (services/merchants/service_layer/settlements.py) against the real
mesh: payments captured and refunded through Envoy become settlement lines (the
merchants' consumer of payment events), a settlement run sums them (captured − refunds −
fees) into one record per merchant and UTC day and pays the net out through the transfers
service; running it again changes nothing; a negative day is carried forward; merchants
read their own settlements with a `reports:read` API key."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from services.framework.topology import Profile
from services.merchants.domain.settlement import LineKind, SettlementLine, payout_id_for, totals
from tests.conftest import database_url
from tests.e2e.test_payments_flow import CUR, create_merchant, pay, payer
from tests.e2e.test_slice_http import balance
from tests.helpers import http_details, poll
from tests.integration.test_consumers_merchants import refund

FEE_BPS = 290


@pytest.fixture
def merchants_db(profile: Profile, mesh_secrets: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url(profile, mesh_secrets, "merchants"), autocommit=True) as conn:
        yield conn


def fee(amount: int) -> int:
    return (amount * FEE_BPS + 5_000) // 10_000


def wait_for_lines(db: psycopg.Connection[Any], merchant_id: str, count: int) -> list[tuple[Any, ...]]:
    def found() -> list[tuple[Any, ...]] | None:
        rows = db.execute(
            "SELECT kind, amount_minor, fee_minor, settlement_date FROM settlement_lines "
            "WHERE merchant_id = %s",
            (merchant_id,),
        ).fetchall()
        return rows if len(rows) >= count else None

    rows: list[tuple[Any, ...]] = poll(found, 30, f"{count} settlement lines of merchant {merchant_id}")
    assert len(rows) == count
    return rows


def run(gateway: httpx.Client, merchant_id: str, day: date | str, expect: int = 200) -> dict[str, Any]:
    reply = gateway.post(
        "/v1/settlements:run",
        json={"settlementDate": day if isinstance(day, str) else day.isoformat(), "merchantId": merchant_id},
    )
    assert reply.status_code == expect, reply.text
    return reply.json()  # type: ignore[no-any-return]


def settled(gateway: httpx.Client, merchant_id: str, day: date) -> dict[str, Any]:
    settlements = run(gateway, merchant_id, day)["settlements"]
    assert len(settlements) == 1 and settlements[0]["merchantId"] == merchant_id
    return settlements[0]  # type: ignore[no-any-return]


def wait_until_paid(gateway: httpx.Client, merchant_id: str, settlement_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        reply = gateway.get(f"/v1/merchants/{merchant_id}/settlements/{settlement_id}")
        assert reply.status_code == 200, reply.text
        s = reply.json()["settlement"]
        return s if s["state"] != "STATE_PENDING" else None

    return poll(done, 30, f"settlement {settlement_id} to leave PENDING")  # type: ignore[no-any-return]


def minor(money: dict[str, Any]) -> int:
    assert money.get("currency") == CUR
    return int(money.get("amountMinor", "0"))


def payouts_of(gateway: httpx.Client, wallet_id: str) -> list[dict[str, Any]]:
    reply = gateway.get("/v1/payouts", params={"walletId": wallet_id})
    assert reply.status_code == 200, reply.text
    return reply.json().get("payouts", [])  # type: ignore[no-any-return]


def test_a_day_is_settled_and_paid_out_once(gateway: httpx.Client, merchants_db) -> None:  # type: ignore[no-untyped-def]
    shop = create_merchant(gateway, fee_bps=FEE_BPS)
    merchant_id, shop_wallet = shop["merchantId"], shop["settlementWalletId"]
    wallet = payer(gateway, 100_000)
    first = pay(gateway, shop, wallet, 4_000)["payment"]
    pay(gateway, shop, wallet, 2_500)
    refund(gateway, first["paymentId"], 1_000)
    lines = wait_for_lines(merchants_db, merchant_id, 3)
    day = max(row[3] for row in lines)  # the UTC day of the lines (both, unless run at midnight)

    gross, refunds, fees = 6_500, 1_000, fee(4_000) + fee(2_500)
    net = gross - refunds - fees
    assert balance(gateway, shop_wallet) == net  # what the day left in the settlement wallet

    settlement = settled(gateway, merchant_id, day)
    assert settlement["settlementDate"] == day.isoformat()
    assert (minor(settlement["grossCaptured"]), minor(settlement["refunds"]), minor(settlement["fees"])) == (
        gross,
        refunds,
        fees,
    )
    assert minor(settlement["net"]) == net
    assert settlement["payoutId"] == str(payout_id_for(uuid.UUID(merchant_id), day))
    paid = wait_until_paid(gateway, merchant_id, settlement["settlementId"])
    assert paid["state"] == "STATE_PAID_OUT", paid

    payout = gateway.get(f"/v1/payouts/{settlement['payoutId']}").json()["payout"]
    assert payout["state"] == "STATE_COMPLETED" and minor(payout["amount"]) == net
    assert (
        payout["sourceWalletId"] == shop_wallet and payout["destination"]["iban"] == "DE89370400440532013000"
    )
    assert balance(gateway, shop_wallet) == 0

    # Every line is in the settlement, once.
    assert merchants_db.execute(
        "SELECT count(*) FROM settlement_lines WHERE merchant_id = %s AND settlement_id = %s",
        (merchant_id, settlement["settlementId"]),
    ).fetchone() == (3,)

    # Running it again finds the first settlement and pays nothing more.
    again = settled(gateway, merchant_id, day)
    assert again["settlementId"] == settlement["settlementId"] and again["payoutId"] == settlement["payoutId"]
    assert again["state"] == "STATE_PAID_OUT"
    assert [p["payoutId"] for p in payouts_of(gateway, shop_wallet)] == [settlement["payoutId"]]
    assert balance(gateway, shop_wallet) == 0
    assert merchants_db.execute(
        "SELECT count(*) FROM merchant_settlements WHERE merchant_id = %s", (merchant_id,)
    ).fetchone() == (1,)

    listed = gateway.get(f"/v1/merchants/{merchant_id}/settlements").json()["settlements"]
    assert [s["settlementId"] for s in listed] == [settlement["settlementId"]]


def merchant_paid_to(gateway: httpx.Client, iban: str) -> dict[str, Any]:
    reply = gateway.post(
        "/v1/merchants",
        json={
            "legalName": "Shop GmbH",
            "displayName": "Shop",
            "contactEmail": "ops@shop.example",
            "countryCode": "DE",
            "settlementCurrency": CUR,
            "feeBps": FEE_BPS,
            "payoutAccount": {"holderName": "Shop GmbH", "iban": iban, "countryCode": "DE"},
        },
    )
    assert reply.status_code == 200, reply.text
    activated = gateway.post(f"/v1/merchants/{reply.json()['merchant']['merchantId']}:activate", json={})
    assert activated.status_code == 200, activated.text
    return activated.json()["merchant"]  # type: ignore[no-any-return]


def settle_one_payment(
    gateway: httpx.Client, db: psycopg.Connection[Any], shop: dict[str, Any], amount: int
) -> tuple[dict[str, Any], date]:
    pay(gateway, shop, payer(gateway, amount), amount)
    day = max(row[3] for row in wait_for_lines(db, shop["merchantId"], 1))
    return settled(gateway, shop["merchantId"], day), day


def test_a_rejected_payout_fails_the_settlement_and_leaves_the_money(
    gateway: httpx.Client, merchants_db
) -> None:  # type: ignore[no-untyped-def]
    shop = merchant_paid_to(gateway, "DE62370400440532013001")  # the rail rejects it: AC04
    settlement, day = settle_one_payment(gateway, merchants_db, shop, 2_000)
    failed = wait_until_paid(gateway, shop["merchantId"], settlement["settlementId"])
    assert failed["state"] == "STATE_FAILED" and failed["failureReason"] == "AC04", failed
    net = 2_000 - fee(2_000)
    assert balance(gateway, shop["settlementWalletId"]) == net
    again = settled(gateway, shop["merchantId"], day)
    assert again["settlementId"] == settlement["settlementId"] and again["state"] == "STATE_FAILED"
    assert balance(gateway, shop["settlementWalletId"]) == net


def test_a_late_payout_leaves_the_settlement_pending_until_it_completes(
    gateway: httpx.Client, merchants_db
) -> None:  # type: ignore[no-untyped-def]
    shop = merchant_paid_to(gateway, "DE35370400440532013002")  # the rail confirms it ~3 s later
    settlement, _ = settle_one_payment(gateway, merchants_db, shop, 1_500)
    assert settlement["state"] == "STATE_PENDING"  # the payout is still under way
    paid = wait_until_paid(gateway, shop["merchantId"], settlement["settlementId"])
    assert paid["state"] == "STATE_PAID_OUT", paid
    payout = gateway.get(f"/v1/payouts/{settlement['payoutId']}").json()["payout"]
    assert payout["state"] == "STATE_COMPLETED" and minor(payout["amount"]) == 1_500 - fee(1_500)
    assert balance(gateway, shop["settlementWalletId"]) == 0


def test_concurrent_runs_make_one_settlement_and_one_payout(gateway: httpx.Client, merchants_db) -> None:  # type: ignore[no-untyped-def]
    shop = create_merchant(gateway, fee_bps=FEE_BPS)
    pay(gateway, shop, payer(gateway, 5_000), 5_000)
    day = max(row[3] for row in wait_for_lines(merchants_db, shop["merchantId"], 1))
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: settled(gateway, shop["merchantId"], day), range(6)))
    assert len({r["settlementId"] for r in results}) == 1
    wait_until_paid(gateway, shop["merchantId"], results[0]["settlementId"])
    assert [p["payoutId"] for p in payouts_of(gateway, shop["settlementWalletId"])] == [
        results[0]["payoutId"]
    ]
    assert balance(gateway, shop["settlementWalletId"]) == 0


def test_a_settlement_recorded_before_a_crash_is_paid_out_by_the_resume_job(  # type: ignore[no-untyped-def]
    gateway: httpx.Client, merchants_db
) -> None:
    # The state a crash between the settlement's commit and CreatePayout leaves: a PENDING
    # settlement with its payout id, and no payout in the transfers service.
    shop = create_merchant(gateway, fee_bps=FEE_BPS)
    merchant_id, shop_wallet = shop["merchantId"], shop["settlementWalletId"]
    pay(gateway, shop, payer(gateway, 1_000), 1_000)
    wait_for_lines(merchants_db, merchant_id, 1)
    net = 1_000 - fee(1_000)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    payout_id = payout_id_for(uuid.UUID(merchant_id), yesterday)
    settlement_id = uuid.uuid4()
    merchants_db.execute(
        "INSERT INTO merchant_settlements (settlement_id, merchant_id, settlement_date, currency, "
        "gross_captured_minor, refunds_minor, fees_minor, net_minor, payout_minor, state, payout_id, "
        "source_wallet_id, payout_account) VALUES (%s, %s, %s, %s, %s, 0, %s, %s, %s, 'PENDING', %s, %s, %s)",
        (
            settlement_id,
            merchant_id,
            yesterday,
            CUR,
            1_000,
            fee(1_000),
            net,
            net,
            payout_id,
            shop_wallet,
            Jsonb({"holder_name": "Shop GmbH", "country_code": "DE", "iban": "DE89370400440532013000"}),
        ),
    )
    merchants_db.execute(
        "UPDATE settlement_lines SET settlement_id = %s WHERE merchant_id = %s", (settlement_id, merchant_id)
    )
    paid = wait_until_paid(gateway, merchant_id, str(settlement_id))
    assert paid["state"] == "STATE_PAID_OUT" and paid["payoutId"] == str(payout_id)
    assert [p["payoutId"] for p in payouts_of(gateway, shop_wallet)] == [str(payout_id)]
    assert balance(gateway, shop_wallet) == 0
    # A run of that day now finds it, and pays nothing more.
    assert settled(gateway, merchant_id, yesterday)["settlementId"] == str(settlement_id)
    assert len(payouts_of(gateway, shop_wallet)) == 1


def test_a_negative_day_pays_nothing_and_is_carried_forward(gateway: httpx.Client, merchants_db) -> None:  # type: ignore[no-untyped-def]
    shop = create_merchant(gateway, fee_bps=FEE_BPS)
    merchant_id, shop_wallet = shop["merchantId"], shop["settlementWalletId"]
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    # Yesterday: a refund of an earlier payment and nothing captured (a line as the consumer
    # writes it, dated yesterday).
    merchants_db.execute(
        "INSERT INTO settlement_lines (event_id, merchant_id, payment_id, kind, amount_minor, fee_minor, "
        "currency, occurred_at, settlement_date) VALUES (%s, %s, %s, 'REFUND', 500, 0, %s, %s, %s)",
        (
            uuid.uuid4(),
            merchant_id,
            uuid.uuid4(),
            CUR,
            datetime.combine(yesterday, datetime.min.time(), UTC) + timedelta(hours=12),
            yesterday,
        ),
    )
    negative = settled(gateway, merchant_id, yesterday)
    assert minor(negative["net"]) == -500 and minor(negative["refunds"]) == 500
    assert negative["state"] == "STATE_PAID_OUT" and not negative.get("payoutId")

    wallet = payer(gateway, 10_000)
    pay(gateway, shop, wallet, 3_000)
    lines = wait_for_lines(merchants_db, merchant_id, 2)
    day = max(row[3] for row in lines)
    settlement = settled(gateway, merchant_id, day)
    net = 3_000 - fee(3_000)
    assert minor(settlement["net"]) == net and settlement["payoutId"]
    assert wait_until_paid(gateway, merchant_id, settlement["settlementId"])["state"] == "STATE_PAID_OUT"
    payout = gateway.get(f"/v1/payouts/{settlement['payoutId']}").json()["payout"]
    assert minor(payout["amount"]) == net - 500  # yesterday's deficit is taken first
    assert balance(gateway, shop_wallet) == 500


def test_a_day_without_payments_makes_a_record_and_no_payout(gateway: httpx.Client) -> None:
    shop = create_merchant(gateway, fee_bps=FEE_BPS)
    day = datetime.now(UTC).date() - timedelta(days=1)
    settlement = settled(gateway, shop["merchantId"], day)
    assert minor(settlement["net"]) == 0 and settlement["state"] == "STATE_PAID_OUT"
    assert not settlement.get("payoutId")
    assert settled(gateway, shop["merchantId"], day)["settlementId"] == settlement["settlementId"]
    assert payouts_of(gateway, shop["settlementWalletId"]) == []


def test_refusals(gateway: httpx.Client, new_id) -> None:  # type: ignore[no-untyped-def]
    shop = create_merchant(gateway, fee_bps=FEE_BPS)
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    info, _ = http_details(run(gateway, shop["merchantId"], tomorrow, expect=400))
    assert info is not None and info["reason"] == "INVALID_STATE"
    info, fields = http_details(run(gateway, shop["merchantId"], "2025-02-30", expect=400))
    assert info is not None and info["reason"] == "INVALID_REQUEST" and fields == ["settlement_date"]
    info, _ = http_details(run(gateway, new_id(), "2025-02-01", expect=404))
    assert info is not None and info["reason"] == "MERCHANT_NOT_FOUND"
    reply = gateway.get(f"/v1/merchants/{shop['merchantId']}/settlements/{new_id()}")
    assert reply.status_code == 404 and http_details(reply.json())[0]["reason"] == "SETTLEMENT_NOT_FOUND"  # type: ignore[index]


def test_a_merchant_reads_its_own_settlements_with_reports_read(  # type: ignore[no-untyped-def]
    gateway: httpx.Client, profile: Profile
) -> None:
    shop, rival = create_merchant(gateway), create_merchant(gateway)
    day = datetime.now(UTC).date() - timedelta(days=1)
    own = settled(gateway, shop["merchantId"], day)
    theirs = settled(gateway, rival["merchantId"], day)

    def key(merchant_id: str, scope: str) -> str:
        reply = gateway.post(f"/v1/merchants/{merchant_id}/apiKeys", json={"scopes": [scope]})
        assert reply.status_code == 200, reply.text
        return f"{reply.json()['apiKey']['publicId']}.{reply.json()['secret']}"

    reader, writer = (
        key(shop["merchantId"], "API_KEY_SCOPE_REPORTS_READ"),
        key(shop["merchantId"], "API_KEY_SCOPE_WEBHOOKS_WRITE"),
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{profile.gateway_port}", timeout=30) as anonymous:
        mine = anonymous.get(f"/v1/merchants/{shop['merchantId']}/settlements", headers={"x-api-key": reader})
        assert mine.status_code == 200, mine.text
        assert [s["settlementId"] for s in mine.json()["settlements"]] == [own["settlementId"]]
        one = anonymous.get(
            f"/v1/merchants/{shop['merchantId']}/settlements/{own['settlementId']}",
            headers={"x-api-key": reader},
        )
        assert one.status_code == 200 and one.json()["settlement"]["settlementId"] == own["settlementId"]
        # Another merchant's settlement, under the shop's id or the rival's: refused or not found.
        other = anonymous.get(
            f"/v1/merchants/{shop['merchantId']}/settlements/{theirs['settlementId']}",
            headers={"x-api-key": reader},
        )
        assert other.status_code == 404
        assert (
            anonymous.get(
                f"/v1/merchants/{rival['merchantId']}/settlements", headers={"x-api-key": reader}
            ).status_code
            == 403
        )
        no_scope = anonymous.get(
            f"/v1/merchants/{shop['merchantId']}/settlements", headers={"x-api-key": writer}
        )
        assert no_scope.status_code == 403
        assert http_details(no_scope.json())[0]["reason"] == "INSUFFICIENT_SCOPE"  # type: ignore[index]
        running = anonymous.post(
            "/v1/settlements:run",
            json={"settlementDate": day.isoformat(), "merchantId": shop["merchantId"]},
            headers={"x-api-key": reader},
        )
        assert running.status_code == 403


def test_the_sums_and_the_carry() -> None:
    lines = [
        SettlementLine(LineKind.CAPTURE, 4_000, 116),
        SettlementLine(LineKind.CAPTURE, 2_500, 73),
        SettlementLine(LineKind.REFUND, 1_000, 0),
    ]
    t = totals(lines, carried_in=0)
    assert (t.gross_captured, t.refunds, t.fees, t.net, t.payout, t.carried_out) == (
        6_500,
        1_000,
        189,
        5_311,
        5_311,
        0,
    )
    t = totals(lines, carried_in=-6_000)
    assert (t.net, t.payout, t.carried_out) == (5_311, 0, -689)
    t = totals([SettlementLine(LineKind.REFUND, 300, 0)], carried_in=-10)
    assert (t.net, t.payout, t.carried_out) == (-300, 0, -310)
    assert totals([], 0).payout == 0
