"""The wallet's group commit (services/wallet/service_layer/batching.py), against the real
PostgreSQL and Redis of the mesh: a batch of transfer orders decided in one transaction
gives each order exactly the answer it would get alone, in arrival order; a batch that
fails as a whole falls back to one by one without a wrong answer; and under hundreds of
concurrent transfers through the service (random pairs, one hot wallet, holds captured
into it, retries of the same references) money is conserved to the unit.

The first two tests drive the ledger in-process (`Ledger.transfer_many`), so a batch
holds exactly the orders the test names; the third goes through the running service,
where concurrent requests form the batches themselves."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from google.protobuf.timestamp_pb2 import Timestamp
from interpay.common.v1.money_pb2 import Money
from interpay.events.v1.envelope_pb2 import EventEnvelope
from interpay.wallet.v1 import wallet_service_pb2 as pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub
from prometheus_client import REGISTRY

from services.framework.db import Database
from services.framework.errors import ServiceError
from services.wallet.adapters.balance_cache import BalanceCache
from services.wallet.adapters.repository import transfer_legs
from services.wallet.domain.model import OwnerType, TransactionKind, TransferOrder, WalletState
from services.wallet.service_layer.ledger import Ledger, TransferResult, movement_events
from tests.conftest import database_url
from tests.helpers import rpc_details, service_aio_channel

CUR = "NOK"


@pytest.fixture
async def ledger(profile, mesh_secrets) -> AsyncIterator[Ledger]:  # type: ignore[no-untyped-def]
    """The wallet's ledger in this process, on the mesh's wallet database and Redis; its
    batcher off, so that each `transfer_many` call is exactly one batch."""
    db = Database(database_url(profile, mesh_secrets, "wallet"), None, max_size=4)
    await db.pool.open(wait=True)
    client = aioredis.Redis(host="127.0.0.1", port=profile.redis_port)
    ledger = Ledger(db, BalanceCache(client), batch_size=1)
    try:
        yield ledger
    finally:
        await ledger.settled()
        await client.aclose()
        await db.close()


@pytest.fixture
def wallet_db(profile, mesh_secrets) -> Any:  # type: ignore[no-untyped-def]
    with psycopg.connect(database_url(profile, mesh_secrets, "wallet"), autocommit=True) as conn:
        yield conn


async def open_wallet(
    ledger: Ledger, funds: int = 0, owner_type: OwnerType = OwnerType.USER, currency: str = CUR
) -> uuid.UUID:
    wallet = await ledger.create_wallet(owner_type, str(uuid.uuid4()), currency)
    if funds:
        await ledger.fund(wallet.wallet_id, funds, currency, str(uuid.uuid4()), "test funding")
    return wallet.wallet_id


def order(
    source: uuid.UUID, destination: uuid.UUID, amount: int, reference: str | None = None
) -> TransferOrder:
    return TransferOrder(
        source, destination, amount, CUR, reference or str(uuid.uuid4()), TransactionKind.TRANSFER
    )


def reason(outcome: TransferResult | BaseException) -> str:
    """The ErrorInfo reason a refused order's caller gets ("" for a success)."""
    if isinstance(outcome, TransferResult):
        return ""
    assert isinstance(outcome, ServiceError), repr(outcome)
    return outcome.reason


def ledger_state(conn: psycopg.Connection[Any], wallets: list[uuid.UUID]) -> dict[uuid.UUID, tuple[int, ...]]:
    rows = conn.execute(
        "SELECT wallet_id, balance, available, pending, version FROM wallets WHERE wallet_id = ANY(%s)",
        (wallets,),
    ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def assert_entries_follow_balances(
    conn: psycopg.Connection[Any], wallet_id: uuid.UUID, *, captured_from: bool = False, traced: bool = False
) -> None:
    """Each entry's balance_after is the previous one plus its amount, in entry order, ending
    at the wallet's balance; and the wallet's events carry consecutive versions, the last
    one the wallet's version, with the same running balances (unless a hold was captured
    from it: that entry's event is the HoldCaptured, without a balance); `traced`: every
    event carries the trace of the request that made it."""
    entries = conn.execute(
        "SELECT amount, balance_after FROM wallet_transactions WHERE wallet_id = %s ORDER BY entry_id",
        (wallet_id,),
    ).fetchall()
    running = 0
    for amount, balance_after in entries:
        running += amount
        assert balance_after == running, f"entry of {amount} says {balance_after}, expected {running}"
    balance, version = conn.execute(
        "SELECT balance, version FROM wallets WHERE wallet_id = %s", (wallet_id,)
    ).fetchone()  # type: ignore[misc]
    assert running == balance
    envelopes = [
        EventEnvelope.FromString(bytes(r[0]))
        for r in conn.execute(
            "SELECT envelope FROM outbox WHERE message_key = %s ORDER BY position", (str(wallet_id),)
        ).fetchall()
    ]
    versions = [e.aggregate_version for e in envelopes]
    if traced:  # each request's trace travels with its events, batched or not
        assert all(e.traceparent.startswith("00-") for e in envelopes)
    assert versions == list(range(1, version + 1)), versions  # created, then one per change
    if captured_from:
        return
    credits_and_debits = [e for e in envelopes if e.event_type.endswith(("FundsCredited", "FundsDebited"))]
    balances_in_events = []
    for e in credits_and_debits:
        entry = pb.WalletTransaction()
        e.payload.Unpack(entry)
        balances_in_events.append(entry.balance_after.amount_minor)
    assert balances_in_events == [b for _, b in entries]


async def test_a_batch_decides_each_order_as_if_they_ran_one_after_another(ledger: Ledger, wallet_db) -> None:  # type: ignore[no-untyped-def]
    a, b, c = await open_wallet(ledger, 1000), await open_wallet(ledger, 100), await open_wallet(ledger)
    shop = await open_wallet(ledger, 0, OwnerType.MERCHANT)
    frozen = await open_wallet(ledger, 500)
    await ledger.change_state(frozen, WalletState.FROZEN, "review")
    other_currency = await open_wallet(ledger, 0, currency="DKK")
    earlier_order = order(a, c, 10)
    earlier = await ledger.transfer(earlier_order)  # recorded before the batch
    before = ledger_state(wallet_db, [a, b, c, shop, frozen, other_currency])
    first = order(a, shop, 300)
    orders = [
        first,  # 0 ok: a 690
        order(b, shop, 60),  # 1 ok: b 40
        order(b, c, 50),  # 2 refused: b has 40 left after order 1
        order(b, c, 40),  # 3 ok on the running balance: b 0
        order(c, a, 50),  # 4 ok only thanks to order 3's credit: c had 10 + 40
        first,  # 5 the same request again: a replay of order 0
        order(a, shop, 301, first.reference),  # 6 same reference, another amount
        earlier_order,  # 7 a retry of the transfer recorded before the batch
        order(a, shop, 10, earlier_order.reference),  # 8 that reference for other parties
        order(frozen, a, 10),  # 9 a frozen wallet cannot send
        order(a, frozen, 10),  # 10 ... but receives
        order(a, other_currency, 5),  # 11 another currency
        order(a, uuid.uuid4(), 5),  # 12 no such wallet
        order(a, shop, 1),  # 13 ok after all of that
    ]
    fallbacks = REGISTRY.get_sample_value("interpay_wallet_transfer_batch_fallbacks_total") or 0.0
    outcomes = await ledger.transfer_many(orders)
    # Decided by the batch itself, not by the one-by-one fallback (which would also be right).
    assert REGISTRY.get_sample_value("interpay_wallet_transfer_batch_fallbacks_total") == fallbacks

    assert [reason(o) for o in outcomes] == [
        "",
        "",
        "INSUFFICIENT_FUNDS",
        "",
        "",
        "",
        "IDEMPOTENCY_MISMATCH",
        "",
        "IDEMPOTENCY_MISMATCH",
        "WALLET_NOT_ACTIVE",
        "",
        "CURRENCY_MISMATCH",
        "WALLET_NOT_FOUND",
        "",
    ]
    results: list[Any] = outcomes
    assert results[6].metadata["mismatched_fields"] == "amount"
    assert results[8].metadata["mismatched_fields"] == "destination_wallet_id"
    assert results[2].metadata["available_minor"] == "40"
    # Replays name the transaction first recorded and are flagged as such.
    assert results[5].replayed and results[5].transaction_id == results[0].transaction_id
    assert results[7].replayed and results[7].transaction_id == earlier.transaction_id
    new = [0, 1, 3, 4, 10, 13]
    assert not any(results[i].replayed for i in new)
    assert len({results[i].transaction_id for i in new}) == len(new)
    # Each success shows its wallets right after it: the running state, one version each.
    assert (results[1].destination.balance, results[1].destination.version) == (360, before[shop][3] + 2)
    assert (results[3].source.balance, results[3].source.available) == (0, 0)
    assert results[4].source.balance == 0 and results[4].destination.balance == 740

    after = ledger_state(wallet_db, [a, b, c, shop, frozen, other_currency])
    expected = {  # balance, and how many of the batch's movements changed the wallet
        a: (1000 - 10 - 300 + 50 - 10 - 1, 4),  # orders 0, 4, 10, 13
        b: (0, 2),  # 1, 3
        c: (10 + 40 - 50, 2),  # 3, 4
        shop: (361, 3),  # 0, 1, 13
        frozen: (510, 1),  # 10
        other_currency: (0, 0),
    }
    for wallet_id, (balance, moves) in expected.items():
        assert after[wallet_id] == (balance, balance, 0, before[wallet_id][3] + moves), wallet_id
    references = [o.reference for o in orders]
    recorded = wallet_db.execute(
        "SELECT reference, count(*) FROM ledger_transactions WHERE reference = ANY(%s) GROUP BY reference",
        (references,),
    ).fetchall()
    assert sorted(r for r, _ in recorded) == sorted({references[i] for i in (*new, 7)})
    assert all(n == 1 for _, n in recorded)
    for wallet_id in (a, b, c, shop, frozen):
        assert_entries_follow_balances(wallet_db, wallet_id)
    # The cache saw the batch: a read now is the committed wallet, never an older one.
    cached = await ledger.get_wallet(shop)
    assert (cached.balance, cached.version) == (361, before[shop][3] + 3)


async def test_a_reference_taken_meanwhile_outside_the_batch_falls_back_to_one_by_one(
    ledger: Ledger, wallet_db
) -> None:  # type: ignore[no-untyped-def]
    payer, payee = await open_wallet(ledger, 1000), await open_wallet(ledger)
    other_payer, other_payee = await open_wallet(ledger, 1000), await open_wallet(ledger)
    taken = str(uuid.uuid4())
    fallbacks = REGISTRY.get_sample_value("interpay_wallet_transfer_batch_fallbacks_total") or 0.0
    orders = [order(payer, payee, 7), order(payer, payee, 8, taken), order(payee, payer, 1)]
    # Another writer (the one-transfer path, on other wallets) records `taken` and has not
    # committed yet: the batch cannot see it, plans it as new, and its insert waits on it.
    async with ledger._writing([other_payer, other_payee]) as (repo, changed):
        locked = await repo.lock_wallets([other_payer, other_payee])
        theirs = order(other_payer, other_payee, 5, taken)
        legs, transaction_id = transfer_legs(theirs), uuid.uuid4()
        written = await repo.record_movement(
            transaction_id, theirs, legs, events=movement_events(locked, transaction_id, theirs, legs)
        )
        assert written is not None
        changed.extend(written)
        batch = asyncio.ensure_future(ledger.transfer_many(orders))
        await _until_a_session_waits_on_a_lock(wallet_db)
        assert not batch.done()
    outcomes = await batch  # the insert failed on the committed reference: one by one

    assert REGISTRY.get_sample_value("interpay_wallet_transfer_batch_fallbacks_total") == fallbacks + 1
    assert [reason(o) for o in outcomes] == ["", "IDEMPOTENCY_MISMATCH", ""]
    mismatch: Any = outcomes[1]
    assert mismatch.metadata["mismatched_fields"] == "source_wallet_id,destination_wallet_id,amount"
    state = ledger_state(wallet_db, [payer, payee, other_payer, other_payee])
    assert state[payer][:3] == (1000 - 7 + 1, 994, 0) and state[payee][:3] == (6, 6, 0)
    assert state[other_payee][:3] == (5, 5, 0)
    (count,) = wallet_db.execute(
        "SELECT count(*) FROM ledger_transactions WHERE reference = %s AND source_wallet_id = %s",
        (taken, other_payer),
    ).fetchone()
    assert count == 1
    for wallet_id in (payer, payee, other_payer, other_payee):
        assert_entries_follow_balances(wallet_db, wallet_id)


async def _until_a_session_waits_on_a_lock(conn: psycopg.Connection[Any]) -> None:
    deadline = asyncio.get_running_loop().time() + 20
    while asyncio.get_running_loop().time() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO ledger_transactions%%'"
        ).fetchone()
        if row and row[0]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the batch never waited on the uncommitted reference")


def _expiry(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return ts


async def _batch_counters(profile) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """The service's batches, orders decided in batches, and batches that fell back."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{profile.metrics_port('wallet')}/metrics")).text
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("interpay_wallet_transfer_batch")
    }
    return (
        values["interpay_wallet_transfer_batches_total"],
        values["interpay_wallet_transfer_batched_orders_total"],
        values["interpay_wallet_transfer_batch_fallbacks_total"],
    )


async def test_concurrent_transfers_holds_and_retries_through_batches_conserve_money(
    profile, wallet_db
) -> None:  # type: ignore[no-untyped-def]
    currency, rng = "ISK", random.Random(11)

    def money(amount: int) -> Money:
        return Money(amount_minor=amount, currency=currency)

    async with service_aio_channel(profile, "wallet", "orchestrator") as ch:  # TransferFunds is internal
        stub = WalletServiceStub(ch)

        async def open_one(owner_type: int, funds: int) -> str:
            reply = await stub.CreateWallet(
                pb.CreateWalletRequest(owner_type=owner_type, owner_id=str(uuid.uuid4()), currency=currency)
            )
            if funds:
                await stub.FundWallet(
                    pb.FundWalletRequest(
                        wallet_id=reply.wallet.wallet_id, amount=money(funds), reference=str(uuid.uuid4())
                    )
                )
            return reply.wallet.wallet_id

        # 50 payers with plenty, 10 with 400 who will run out (their refusals are real).
        funds: dict[str, int] = {}
        for i in range(60):
            amount = 200_000 if i < 50 else 400
            funds[await open_one(pb.OWNER_TYPE_USER, amount)] = amount
        payers = list(funds)
        rich = payers[:50]
        merchant = await open_one(pb.OWNER_TYPE_MERCHANT, 0)
        # Holds on 10 rich payers, captured into the merchant while the transfers run:
        # other transactions locking the same wallets (and a hold) in the ledger's order.
        holds = [
            (
                await stub.PlaceHold(
                    pb.PlaceHoldRequest(
                        wallet_id=w, amount=money(900), reference=str(uuid.uuid4()), expire_time=_expiry(300)
                    )
                )
            ).hold
            for w in rich[:10]
        ]
        batches_before, orders_before, fallbacks_before = await _batch_counters(profile)

        def request(src: str, dst: str, amount: int, reference: str | None = None) -> pb.TransferFundsRequest:
            return pb.TransferFundsRequest(
                source_wallet_id=src,
                destination_wallet_id=dst,
                amount=money(amount),
                reference=reference or str(uuid.uuid4()),
                kind=pb.TRANSACTION_KIND_TRANSFER,
            )

        requests = [request(rng.choice(payers), merchant, rng.randint(1, 500)) for _ in range(400)]
        requests += [request(*rng.sample(payers, 2), rng.randint(1, 500)) for _ in range(200)]  # type: ignore[misc]
        # Every fourth request is sent again at once (a retry, same reference and fields);
        # for 30 of the rich payers' requests, a conflicting one with the same reference.
        retries = requests[::4]
        conflicting = [
            request(r.source_wallet_id, r.destination_wallet_id, r.amount.amount_minor + 1, r.reference)
            for r in requests
            if r.source_wallet_id in rich
        ][:30]
        sends = requests + retries + conflicting
        rng.shuffle(sends)
        captures = [
            stub.CaptureHold(
                pb.CaptureHoldRequest(
                    hold_id=h.hold_id,
                    destination_wallet_id=merchant,
                    amount=money(600),
                    reference=str(uuid.uuid4()),
                ),
                timeout=120,
            )
            for h in holds
        ]
        results = await asyncio.gather(
            *(stub.TransferFunds(r, timeout=120) for r in sends), *captures, return_exceptions=True
        )
        batches_after, orders_after, fallbacks_after = await _batch_counters(profile)

    transfer_results, capture_results = results[: len(sends)], results[len(sends) :]
    assert all(isinstance(c, pb.CaptureHoldResponse) for c in capture_results), capture_results
    by_reference: dict[str, list[tuple[pb.TransferFundsRequest, Any]]] = {}
    for sent, result in zip(sends, transfer_results, strict=True):
        by_reference.setdefault(sent.reference, []).append((sent, result))
    paid: dict[str, pb.TransferFundsRequest] = {}
    for reference, attempts in by_reference.items():
        ok = [(s, r) for s, r in attempts if isinstance(r, pb.TransferFundsResponse)]
        for sent, result in attempts:
            if isinstance(result, grpc.aio.AioRpcError):
                info, _ = rpc_details(result)
                code = (result.code(), info.reason if info else None)
                if code[1] == "INSUFFICIENT_FUNDS":
                    assert sent.source_wallet_id not in rich, "a well-funded payer was refused"
                else:
                    assert code == (grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_MISMATCH"), (
                        result.details()
                    )
                    assert ok and ok[0][0].amount != sent.amount, "a mismatch without a different first"
            else:
                assert not isinstance(result, BaseException), result
        # Every success under one reference is the same transaction, with the same fields.
        assert len({r.transaction_id for _, r in ok}) <= 1
        assert len({s.amount.amount_minor for s, _ in ok}) <= 1
        if ok:
            paid[reference] = ok[0][0]
    assert orders_after - orders_before > batches_after - batches_before, "no batch held two orders"
    assert fallbacks_after == fallbacks_before, "a batch failed and ran one by one"

    wallets = [uuid.UUID(w) for w in [*payers, merchant]]
    rows = wallet_db.execute(
        "SELECT w.wallet_id, w.balance, w.available, w.pending, "
        "(SELECT coalesce(sum(amount), 0) FROM wallet_transactions e WHERE e.wallet_id = w.wallet_id) "
        "FROM wallets w WHERE w.wallet_id = ANY(%s)",
        (wallets,),
    ).fetchall()
    assert all(balance == entries for _, balance, _, _, entries in rows), "Σ entries ≠ balance"
    assert all(available >= 0 and pending == 0 for _, _, available, pending, _ in rows)
    balances = {str(r[0]): r[1] for r in rows}
    assert sum(balances.values()) == sum(funds.values())  # nothing created or lost among them
    expected_merchant = sum(
        r.amount.amount_minor for r in paid.values() if r.destination_wallet_id == merchant
    )
    assert balances[merchant] == expected_merchant + 600 * len(holds)
    for wallet_id in payers:
        sent = sum(r.amount.amount_minor for r in paid.values() if r.source_wallet_id == wallet_id)
        received = sum(r.amount.amount_minor for r in paid.values() if r.destination_wallet_id == wallet_id)
        captured = 600 if wallet_id in {h.wallet_id for h in holds} else 0
        assert balances[wallet_id] == funds[wallet_id] - sent + received - captured, wallet_id
    recorded = wallet_db.execute(
        "SELECT reference, amount FROM ledger_transactions WHERE reference = ANY(%s)",
        (list(by_reference),),
    ).fetchall()
    assert sorted(recorded) == sorted((ref, r.amount.amount_minor) for ref, r in paid.items())
    unbalanced = wallet_db.execute(
        "SELECT e.transaction_id FROM wallet_transactions e WHERE e.wallet_id = ANY(%s) "
        "GROUP BY e.transaction_id HAVING (SELECT sum(amount) FROM wallet_transactions x "
        "WHERE x.transaction_id = e.transaction_id) <> 0",
        (wallets,),
    ).fetchall()
    assert unbalanced == []
    held = {uuid.UUID(h.wallet_id) for h in holds}
    for wallet_id in wallets:
        assert_entries_follow_balances(wallet_db, wallet_id, captured_from=wallet_id in held, traced=True)
