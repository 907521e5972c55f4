"""Holds, wallet lifecycle, reconciliation and the balance cache, through the wallet
service's gRPC API against the real PostgreSQL and Redis of the test mesh."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from interpay.common.v1.money_pb2 import Money
from interpay.wallet.v1 import wallet_service_pb2 as pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from tests.helpers import rpc_details, service_aio_channel

CUR = "SEK"


@pytest.fixture
async def wallet(profile) -> AsyncIterator[WalletServiceStub]:  # type: ignore[no-untyped-def]
    async with service_aio_channel(profile, "wallet", "orchestrator") as ch:  # holds are internal
        yield WalletServiceStub(ch)


def money(amount: int) -> Money:
    return Money(amount_minor=amount, currency=CUR)


def expiry(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return ts


async def open_wallet(stub: WalletServiceStub, funds: int = 0, owner_type: int = pb.OWNER_TYPE_USER) -> str:
    wallet_id = (
        await stub.CreateWallet(
            pb.CreateWalletRequest(owner_type=owner_type, owner_id=str(uuid.uuid4()), currency=CUR)
        )
    ).wallet.wallet_id
    if funds:
        await stub.FundWallet(
            pb.FundWalletRequest(wallet_id=wallet_id, amount=money(funds), reference=str(uuid.uuid4()))
        )
    return wallet_id


async def amounts(stub: WalletServiceStub, wallet_id: str) -> tuple[int, int, int]:
    w = (await stub.GetWallet(pb.GetWalletRequest(wallet_id=wallet_id))).wallet
    return w.balance.amount_minor, w.available.amount_minor, w.pending.amount_minor


async def refused(call, reason: str, code=grpc.StatusCode.FAILED_PRECONDITION) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    info, _ = rpc_details(err.value)
    assert info is not None and info.reason == reason, info


def hold_request(
    wallet_id: str, amount: int, reference: str | None = None, seconds: float = 300
) -> pb.PlaceHoldRequest:
    return pb.PlaceHoldRequest(
        wallet_id=wallet_id,
        amount=money(amount),
        reference=reference or str(uuid.uuid4()),
        expire_time=expiry(seconds),
    )


async def test_a_hold_reserves_then_a_partial_capture_pays_and_releases_the_rest(wallet) -> None:  # type: ignore[no-untyped-def]
    payer, merchant = await open_wallet(wallet, 1000), await open_wallet(wallet, 0, pb.OWNER_TYPE_MERCHANT)
    request = hold_request(payer, 600)
    hold = (await wallet.PlaceHold(request)).hold
    assert await amounts(wallet, payer) == (1000, 400, 600)
    assert (await wallet.PlaceHold(request)).hold.hold_id == hold.hold_id  # retry: same hold
    assert await amounts(wallet, payer) == (1000, 400, 600)
    mismatch = pb.PlaceHoldRequest(**{**_fields(request), "amount": money(601)})
    await refused(wallet.PlaceHold(mismatch), "IDEMPOTENCY_MISMATCH")

    await refused(
        wallet.CaptureHold(
            pb.CaptureHoldRequest(
                hold_id=hold.hold_id,
                destination_wallet_id=merchant,
                amount=money(601),
                reference=str(uuid.uuid4()),
            )
        ),
        "CAPTURE_EXCEEDS_HOLD",
    )
    capture = pb.CaptureHoldRequest(
        hold_id=hold.hold_id, destination_wallet_id=merchant, amount=money(450), reference=str(uuid.uuid4())
    )
    first = await wallet.CaptureHold(capture)
    assert first.hold.state == pb.Hold.STATE_CAPTURED
    assert first.hold.captured_amount.amount_minor == 450
    assert await amounts(wallet, payer) == (550, 550, 0)
    assert await amounts(wallet, merchant) == (450, 450, 0)
    again = await wallet.CaptureHold(capture)  # the same capture retried: replayed, not repeated
    assert again.transaction_id == first.transaction_id
    assert await amounts(wallet, merchant) == (450, 450, 0)
    await refused(
        wallet.CaptureHold(pb.CaptureHoldRequest(**{**_fields(capture), "reference": "other"})),
        "HOLD_NOT_ACTIVE",
    )
    await refused(wallet.ReleaseHold(pb.ReleaseHoldRequest(hold_id=hold.hold_id)), "HOLD_NOT_ACTIVE")


def _fields(message) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return {f.name: v for f, v in message.ListFields()}


async def test_release_is_retry_safe_and_a_released_hold_cannot_be_captured(wallet) -> None:  # type: ignore[no-untyped-def]
    payer, merchant = await open_wallet(wallet, 500), await open_wallet(wallet)
    hold = (await wallet.PlaceHold(hold_request(payer, 500))).hold
    await refused(wallet.PlaceHold(hold_request(payer, 1)), "INSUFFICIENT_FUNDS")
    for _ in range(2):
        released = (await wallet.ReleaseHold(pb.ReleaseHoldRequest(hold_id=hold.hold_id))).hold
        assert released.state == pb.Hold.STATE_RELEASED
    assert await amounts(wallet, payer) == (500, 500, 0)
    await refused(
        wallet.CaptureHold(
            pb.CaptureHoldRequest(
                hold_id=hold.hold_id,
                destination_wallet_id=merchant,
                amount=money(1),
                reference=str(uuid.uuid4()),
            )
        ),
        "HOLD_NOT_ACTIVE",
    )
    await refused(
        wallet.GetHold(pb.GetHoldRequest(hold_id=str(uuid.uuid4()))),
        "HOLD_NOT_FOUND",
        grpc.StatusCode.NOT_FOUND,
    )


async def test_an_expired_hold_is_released_automatically_and_cannot_be_captured(wallet) -> None:  # type: ignore[no-untyped-def]
    payer, merchant = await open_wallet(wallet, 300), await open_wallet(wallet)
    hold = (await wallet.PlaceHold(hold_request(payer, 300, seconds=1.5))).hold
    await asyncio.sleep(1.6)
    await refused(
        wallet.CaptureHold(
            pb.CaptureHoldRequest(
                hold_id=hold.hold_id,
                destination_wallet_id=merchant,
                amount=money(300),
                reference=str(uuid.uuid4()),
            )
        ),
        "HOLD_NOT_ACTIVE",
    )
    deadline = time.monotonic() + 15
    state = pb.Hold.STATE_ACTIVE
    while time.monotonic() < deadline and state == pb.Hold.STATE_ACTIVE:
        await asyncio.sleep(0.5)
        state = (await wallet.GetHold(pb.GetHoldRequest(hold_id=hold.hold_id))).hold.state
    assert state == pb.Hold.STATE_EXPIRED
    assert await amounts(wallet, payer) == (300, 300, 0)


async def test_a_hold_resolves_exactly_once_under_racing_captures_and_releases(wallet) -> None:  # type: ignore[no-untyped-def]
    payer, merchant = await open_wallet(wallet, 1000), await open_wallet(wallet)
    hold = (await wallet.PlaceHold(hold_request(payer, 1000))).hold
    captures = [
        wallet.CaptureHold(
            pb.CaptureHoldRequest(
                hold_id=hold.hold_id,
                destination_wallet_id=merchant,
                amount=money(700),
                reference=str(uuid.uuid4()),
            )
        )
        for _ in range(10)
    ]
    releases = [wallet.ReleaseHold(pb.ReleaseHoldRequest(hold_id=hold.hold_id)) for _ in range(5)]
    results = await asyncio.gather(*captures, *releases, return_exceptions=True)
    wins = [r for r in results if not isinstance(r, Exception)]
    final = (await wallet.GetHold(pb.GetHoldRequest(hold_id=hold.hold_id))).hold
    if final.state == pb.Hold.STATE_CAPTURED:
        assert len(wins) == 1 and await amounts(wallet, merchant) == (700, 700, 0)
        assert await amounts(wallet, payer) == (300, 300, 0)
    else:  # released first; further releases are retry-safe, every capture refused
        assert final.state == pb.Hold.STATE_RELEASED
        assert all(isinstance(r, pb.ReleaseHoldResponse) for r in wins)
        assert await amounts(wallet, payer) == (1000, 1000, 0)
    for r in results:
        if isinstance(r, grpc.aio.AioRpcError):
            assert r.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_frozen_and_closed_wallets_do_only_what_they_may(wallet) -> None:  # type: ignore[no-untyped-def]
    a, b = await open_wallet(wallet, 1000), await open_wallet(wallet, 100)
    hold = (await wallet.PlaceHold(hold_request(a, 100))).hold
    frozen = (await wallet.FreezeWallet(pb.FreezeWalletRequest(wallet_id=a, reason="fraud review"))).wallet
    assert frozen.state == pb.Wallet.STATE_FROZEN
    transfer = pb.TransferFundsRequest(
        source_wallet_id=a, destination_wallet_id=b, amount=money(1), reference=str(uuid.uuid4())
    )
    await refused(wallet.TransferFunds(transfer), "WALLET_NOT_ACTIVE")
    await refused(wallet.PlaceHold(hold_request(a, 1)), "WALLET_NOT_ACTIVE")
    await refused(
        wallet.CaptureHold(
            pb.CaptureHoldRequest(
                hold_id=hold.hold_id, destination_wallet_id=b, amount=money(1), reference=str(uuid.uuid4())
            )
        ),
        "WALLET_NOT_ACTIVE",
    )
    await wallet.TransferFunds(
        pb.TransferFundsRequest(  # a frozen wallet still receives
            source_wallet_id=b, destination_wallet_id=a, amount=money(100), reference=str(uuid.uuid4())
        )
    )
    await wallet.ReleaseHold(pb.ReleaseHoldRequest(hold_id=hold.hold_id))  # and releases holds
    assert await amounts(wallet, a) == (1100, 1100, 0)

    await refused(wallet.CloseWallet(pb.CloseWalletRequest(wallet_id=a)), "WALLET_NOT_EMPTY")
    await wallet.UnfreezeWallet(pb.UnfreezeWalletRequest(wallet_id=a))
    await wallet.TransferFunds(
        pb.TransferFundsRequest(
            source_wallet_id=a, destination_wallet_id=b, amount=money(1100), reference=str(uuid.uuid4())
        )
    )
    closed = (await wallet.CloseWallet(pb.CloseWalletRequest(wallet_id=a))).wallet
    assert closed.state == pb.Wallet.STATE_CLOSED
    await refused(
        wallet.TransferFunds(
            pb.TransferFundsRequest(
                source_wallet_id=b, destination_wallet_id=a, amount=money(1), reference=str(uuid.uuid4())
            )
        ),
        "WALLET_NOT_ACTIVE",
    )
    await refused(wallet.UnfreezeWallet(pb.UnfreezeWalletRequest(wallet_id=a)), "WALLET_NOT_ACTIVE")
    funding = (
        await wallet.GetSystemWallet(
            pb.GetSystemWalletRequest(account=pb.SYSTEM_ACCOUNT_FUNDING, currency=CUR)
        )
    ).wallet
    await refused(
        wallet.FreezeWallet(pb.FreezeWalletRequest(wallet_id=funding.wallet_id, reason="x")), "SYSTEM_WALLET"
    )


async def test_reconciliation_finds_the_ledger_balanced(wallet) -> None:  # type: ignore[no-untyped-def]
    await open_wallet(wallet, 10)
    report = await wallet.ReconcileLedger(pb.ReconcileLedgerRequest())
    assert report.wallets_checked > 0 and report.transactions_checked > 0
    assert list(report.mismatched_wallet_ids) == []
    assert list(report.unbalanced_transaction_ids) == []


async def test_a_cached_balance_is_never_stale_after_a_commit(wallet, profile) -> None:  # type: ignore[no-untyped-def]
    source, target = await open_wallet(wallet, 100_000), await open_wallet(wallet)
    stop = asyncio.Event()

    async def readers() -> None:  # keep populating the cache from the database
        while not stop.is_set():
            await asyncio.gather(*(wallet.GetWallet(pb.GetWalletRequest(wallet_id=target)) for _ in range(4)))

    background = asyncio.ensure_future(readers())
    try:
        for i in range(60):
            moved = await wallet.TransferFunds(
                pb.TransferFundsRequest(
                    source_wallet_id=source,
                    destination_wallet_id=target,
                    amount=money(1),
                    reference=str(uuid.uuid4()),
                )
            )
            seen = (await wallet.GetWallet(pb.GetWalletRequest(wallet_id=target))).wallet
            assert seen.version == moved.destination_wallet.version, f"stale read after {i + 1}"
            assert seen.balance.amount_minor == i + 1
    finally:
        stop.set()
        await background
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{profile.metrics_port('wallet')}/metrics")).text
    hits = next(
        line for line in metrics.splitlines() if line.startswith('interpay_cache_requests{result="hit"}')
    )
    assert float(hits.split()[-1]) > 0, "the cache was never used"


async def test_a_retry_of_a_transfer_that_emptied_the_wallet_replays_it(wallet) -> None:  # type: ignore[no-untyped-def]
    a, b = await open_wallet(wallet, 700), await open_wallet(wallet)
    request = pb.TransferFundsRequest(
        source_wallet_id=a, destination_wallet_id=b, amount=money(700), reference=str(uuid.uuid4())
    )
    first, *retries = await asyncio.gather(*(wallet.TransferFunds(request) for _ in range(4)))
    assert {r.transaction_id for r in retries} == {first.transaction_id}
    later = await wallet.TransferFunds(request)  # the wallet is empty now: still a replay
    assert later.transaction_id == first.transaction_id
    assert await amounts(wallet, a) == (0, 0, 0) and await amounts(wallet, b) == (700, 700, 0)
    await refused(
        wallet.TransferFunds(
            pb.TransferFundsRequest(**{**_fields(request), "reference": "x" + request.reference})
        ),
        "INSUFFICIENT_FUNDS",
    )
