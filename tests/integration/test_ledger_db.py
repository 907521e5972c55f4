"""The ledger's guarantees, checked against the real PostgreSQL of the test mesh: the
database itself refuses to rewrite history or store an unbalanced transaction, a
service's role reaches only its own database, and money is conserved to the unit under
hundreds of concurrent transfers into one hot wallet with retries mixed in."""

from __future__ import annotations

import asyncio
import random
import uuid

import grpc
import psycopg
import pytest
from interpay.common.v1.money_pb2 import Money
from interpay.wallet.v1 import wallet_service_pb2 as pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from tests.conftest import database_url
from tests.helpers import rpc_details, service_aio_channel


@pytest.fixture
def wallet_db(profile, mesh_secrets):  # type: ignore[no-untyped-def]
    with psycopg.connect(database_url(profile, mesh_secrets, "wallet")) as conn:
        yield conn


def _any_entry(conn: psycopg.Connection) -> tuple[int, uuid.UUID]:  # type: ignore[type-arg]
    row = conn.execute("SELECT entry_id, transaction_id FROM wallet_transactions LIMIT 1").fetchone()
    assert row is not None, "the slice tests write entries before this runs"
    return row  # type: ignore[return-value]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE wallet_transactions SET amount = amount + 1 WHERE entry_id = %s",
        "DELETE FROM wallet_transactions WHERE entry_id = %s",
        "UPDATE ledger_transactions SET amount = 1 WHERE transaction_id = "
        "(SELECT transaction_id FROM wallet_transactions WHERE entry_id = %s)",
        "TRUNCATE wallet_transactions, ledger_transactions CASCADE",
    ],
)
def test_the_ledger_is_append_only_in_the_database(wallet_db, statement: str) -> None:  # type: ignore[no-untyped-def]
    entry_id, _ = _any_entry(wallet_db)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        wallet_db.execute(statement, (entry_id,) if "%s" in statement else None)
    wallet_db.rollback()


def test_an_unbalanced_transaction_cannot_commit(wallet_db) -> None:  # type: ignore[no-untyped-def]
    row = wallet_db.execute(
        "SELECT source_wallet_id, destination_wallet_id, currency FROM ledger_transactions LIMIT 1"
    ).fetchone()
    source, destination, currency = row
    tx = uuid.uuid4()
    wallet_db.execute(
        "INSERT INTO ledger_transactions (transaction_id, reference, kind, currency, amount, "
        "source_wallet_id, destination_wallet_id) VALUES (%s, %s, 'TRANSFER', %s, 5, %s, %s)",
        (tx, f"forged-{tx}", currency, source, destination),
    )
    wallet_db.execute(
        "INSERT INTO wallet_transactions (transaction_id, wallet_id, amount, balance_after, "
        "counterparty_wallet_id) VALUES (%s, %s, 5, 0, %s)",
        (tx, destination, source),
    )
    with pytest.raises(psycopg.errors.CheckViolation, match="does not sum to zero"):
        wallet_db.commit()


@pytest.mark.parametrize("other", ["users", "transfers", "postgres"])
def test_a_service_role_reaches_only_its_own_database(profile, mesh_secrets, other: str) -> None:  # type: ignore[no-untyped-def]
    url = database_url(profile, mesh_secrets, "wallet").rsplit("/", 1)[0] + (
        "/postgres" if other == "postgres" else f"/interpay_{other}"
    )
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(url).close()


async def test_money_is_conserved_under_concurrent_transfers_into_a_hot_wallet(profile, wallet_db) -> None:  # type: ignore[no-untyped-def]
    currency = "CHF"
    rng = random.Random(7)
    async with service_aio_channel(profile, "wallet", "orchestrator") as ch:  # TransferFunds is internal
        stub = WalletServiceStub(ch)

        async def open_wallet(owner_type: int) -> str:
            reply = await stub.CreateWallet(
                pb.CreateWalletRequest(owner_type=owner_type, owner_id=str(uuid.uuid4()), currency=currency)
            )
            return reply.wallet.wallet_id

        payers = [await open_wallet(pb.OWNER_TYPE_USER) for _ in range(40)]
        merchant = await open_wallet(pb.OWNER_TYPE_MERCHANT)
        # 35 payers have plenty; 5 have 300 and will run out: their refusals are real.
        funds = {payer: 100_000 if i < 35 else 300 for i, payer in enumerate(payers)}
        for payer, amount in funds.items():
            await stub.FundWallet(
                pb.FundWalletRequest(
                    wallet_id=payer,
                    amount=Money(amount_minor=amount, currency=currency),
                    reference=str(uuid.uuid4()),
                )
            )

        # 300 payments into the hot merchant wallet and 100 between random payers; every
        # fifth request is sent twice at once with the same reference.
        orders = [(rng.choice(payers), merchant, rng.randint(1, 500)) for _ in range(300)]
        orders += [tuple(rng.sample(payers, 2)) + (rng.randint(1, 500),) for _ in range(100)]  # type: ignore[misc]
        requests = [
            pb.TransferFundsRequest(
                source_wallet_id=src,
                destination_wallet_id=dst,
                amount=Money(amount_minor=amount, currency=currency),
                reference=str(uuid.uuid4()),
                kind=pb.TRANSACTION_KIND_TRANSFER,
            )
            for src, dst, amount in orders
        ]
        sends = requests + requests[::5]
        rng.shuffle(sends)
        results = await asyncio.gather(
            *(stub.TransferFunds(r, timeout=120) for r in sends), return_exceptions=True
        )

    succeeded: dict[str, pb.TransferFundsResponse] = {}
    for request, result in zip(sends, results, strict=True):
        if isinstance(result, grpc.aio.AioRpcError):
            info, _ = rpc_details(result)
            assert (result.code(), info.reason if info else None) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "INSUFFICIENT_FUNDS",
            ), result.details()
            assert funds[request.source_wallet_id] == 300, "a well-funded payer was refused"
        else:
            assert not isinstance(result, BaseException), result
            # A duplicate of a successful reference replays the same ledger transaction.
            first = succeeded.setdefault(request.reference, result)
            assert first.transaction_id == result.transaction_id

    wallets = [uuid.UUID(w) for w in [*payers, merchant]]
    rows = wallet_db.execute(
        "SELECT w.wallet_id, w.balance, w.available, "
        "(SELECT coalesce(sum(amount), 0) FROM wallet_transactions e WHERE e.wallet_id = w.wallet_id) "
        "FROM wallets w WHERE w.wallet_id = ANY(%s)",
        (wallets,),
    ).fetchall()
    balances = {r[0]: r[1] for r in rows}
    assert all(balance == entries for _, balance, _, entries in rows), "Σ entries ≠ balance"
    assert all(available >= 0 for _, _, available, _ in rows)
    paid = {r.reference: r for r in requests if r.reference in succeeded}
    expected_merchant = sum(
        r.amount.amount_minor for r in paid.values() if r.destination_wallet_id == merchant
    )
    assert balances[uuid.UUID(merchant)] == expected_merchant
    assert sum(balances.values()) == sum(funds.values())  # nothing created or lost among them
    executed = wallet_db.execute(
        "SELECT reference FROM ledger_transactions WHERE reference = ANY(%s)",
        ([r.reference for r in requests],),
    ).fetchall()
    assert sorted(r[0] for r in executed) == sorted(paid)  # each success once, no failure at all
    totals = wallet_db.execute(
        "SELECT currency, sum(balance) FROM wallets GROUP BY currency HAVING sum(balance) <> 0"
    ).fetchall()
    assert totals == [], f"money created or destroyed: {totals}"
