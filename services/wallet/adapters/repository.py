"""SQL for the ledger, on one connection inside the caller's transaction."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import AsyncConnection, errors

from services.wallet.domain.model import (
    OwnerType,
    TransactionKind,
    TransferOrder,
    Wallet,
    WalletNotFound,
    WalletState,
)

_WALLET_COLUMNS = (
    "wallet_id, owner_type, owner_id, currency, balance, available, pending, "
    "state, version, created_at, updated_at"
)


def _wallet(row: dict[str, Any]) -> Wallet:
    return Wallet(
        wallet_id=row["wallet_id"],
        owner_type=OwnerType(row["owner_type"]),
        owner_id=row["owner_id"],
        currency=row["currency"],
        balance=row["balance"],
        available=row["available"],
        pending=row["pending"],
        state=WalletState(row["state"]),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class LedgerRepository:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    async def insert_wallet(
        self, wallet_id: uuid.UUID, owner_type: OwnerType, owner_id: str, currency: str
    ) -> Wallet | None:
        """Inserts a wallet; None when the owner already has one in that currency."""
        cur = await self.conn.execute(
            f"INSERT INTO wallets (wallet_id, owner_type, owner_id, currency) "
            f"VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING {_WALLET_COLUMNS}",
            (wallet_id, owner_type.value, owner_id, currency),
        )
        row = await cur.fetchone()
        return _wallet(row) if row else None

    async def get_wallet(self, wallet_id: uuid.UUID) -> Wallet | None:
        cur = await self.conn.execute(
            f"SELECT {_WALLET_COLUMNS} FROM wallets WHERE wallet_id = %s", (wallet_id,)
        )
        row = await cur.fetchone()
        return _wallet(row) if row else None

    async def find_wallet(self, owner_type: OwnerType, owner_id: str, currency: str) -> Wallet | None:
        cur = await self.conn.execute(
            f"SELECT {_WALLET_COLUMNS} FROM wallets "
            f"WHERE owner_type = %s AND owner_id = %s AND currency = %s",
            (owner_type.value, owner_id, currency),
        )
        row = await cur.fetchone()
        return _wallet(row) if row else None

    async def list_wallets(self, owner_type: OwnerType, owner_id: str) -> list[Wallet]:
        cur = await self.conn.execute(
            f"SELECT {_WALLET_COLUMNS} FROM wallets WHERE owner_type = %s AND owner_id = %s "
            f"ORDER BY created_at, wallet_id",
            (owner_type.value, owner_id),
        )
        return [_wallet(r) for r in await cur.fetchall()]

    async def lock_wallets(self, wallet_ids: list[uuid.UUID]) -> dict[uuid.UUID, Wallet]:
        """Row-locks the wallets in wallet_id order: every writer takes its locks in the same
        global order, so two transfers can wait on each other but never deadlock.

        NO KEY UPDATE (what an UPDATE of non-key columns takes anyway), not FOR UPDATE:
        the foreign keys of ledger rows take KEY SHARE on the wallets they name, and
        FOR UPDATE would conflict with those and deadlock two transfers into one wallet."""
        cur = await self.conn.execute(
            f"SELECT {_WALLET_COLUMNS} FROM wallets WHERE wallet_id = ANY(%s) "
            f"ORDER BY wallet_id FOR NO KEY UPDATE",
            (sorted(wallet_ids),),
        )
        return {row["wallet_id"]: _wallet(row) for row in await cur.fetchall()}

    async def claim_reference(self, transaction_id: uuid.UUID, order: TransferOrder) -> bool:
        """Records the ledger transaction's header; False if the reference is already taken.

        A concurrent claim of the same reference waits here on the unique index until the
        first commits (then sees it taken) or rolls back (then takes it)."""
        try:
            cur = await self.conn.execute(
                "INSERT INTO ledger_transactions (transaction_id, reference, kind, currency, "
                "amount, source_wallet_id, destination_wallet_id, description) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (reference) DO NOTHING "
                "RETURNING transaction_id",
                (
                    transaction_id,
                    order.reference,
                    order.kind.value,
                    order.currency,
                    order.amount,
                    order.source_wallet_id,
                    order.destination_wallet_id,
                    order.description,
                ),
            )
        except errors.ForeignKeyViolation as exc:
            source = "source" in (exc.diag.constraint_name or "")
            raise WalletNotFound(order.source_wallet_id if source else order.destination_wallet_id) from exc
        return await cur.fetchone() is not None

    async def recorded_transfer(self, reference: str) -> tuple[uuid.UUID, TransferOrder] | None:
        cur = await self.conn.execute(
            "SELECT transaction_id, reference, kind, currency, amount, source_wallet_id, "
            "destination_wallet_id, description FROM ledger_transactions WHERE reference = %s",
            (reference,),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        return row["transaction_id"], TransferOrder(
            source_wallet_id=row["source_wallet_id"],
            destination_wallet_id=row["destination_wallet_id"],
            amount=row["amount"],
            currency=row["currency"],
            reference=row["reference"],
            kind=TransactionKind(row["kind"]),
            description=row["description"],
        )

    async def apply_entry(
        self, transaction_id: uuid.UUID, wallet_id: uuid.UUID, amount: int, counterparty: uuid.UUID
    ) -> Wallet:
        """Moves `amount` (signed) into a locked wallet's balance and writes its ledger entry."""
        cur = await self.conn.execute(
            f"UPDATE wallets SET balance = balance + %s, available = available + %s, "
            f"version = version + 1, updated_at = now() WHERE wallet_id = %s "
            f"RETURNING {_WALLET_COLUMNS}",
            (amount, amount, wallet_id),
        )
        row = await cur.fetchone()
        assert row is not None  # the wallet is locked by this transaction
        await self.conn.execute(
            "INSERT INTO wallet_transactions (transaction_id, wallet_id, amount, balance_after, "
            "counterparty_wallet_id) VALUES (%s, %s, %s, %s, %s)",
            (transaction_id, wallet_id, amount, row["balance"], counterparty),
        )
        return _wallet(row)

    async def list_entries(
        self, wallet_id: uuid.UUID, limit: int, before_entry_id: int | None
    ) -> list[dict[str, Any]]:
        cur = await self.conn.execute(
            "SELECT e.entry_id, e.transaction_id, e.wallet_id, e.amount, e.balance_after, "
            "e.counterparty_wallet_id, e.created_at, t.kind, t.reference, t.description, "
            "t.currency FROM wallet_transactions e "
            "JOIN ledger_transactions t USING (transaction_id) "
            "WHERE e.wallet_id = %s AND (%s::bigint IS NULL OR e.entry_id < %s) "
            "ORDER BY e.entry_id DESC LIMIT %s",
            (wallet_id, before_entry_id, before_entry_id, limit),
        )
        return list(await cur.fetchall())
