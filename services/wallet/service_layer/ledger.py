"""The wallet service's use cases, each one database transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from services.framework import paging
from services.framework.db import Database
from services.framework.errors import AlreadyExists, FieldViolation, InvalidArgument
from services.wallet.adapters.repository import LedgerRepository
from services.wallet.domain.model import (
    OwnerType,
    ReferenceReused,
    SystemAccount,
    TransactionKind,
    TransferOrder,
    Wallet,
    WalletNotFound,
    check_transfer,
    reference_mismatches,
    system_wallet_id,
)


@dataclass(frozen=True)
class TransferResult:
    transaction_id: uuid.UUID
    source: Wallet
    destination: Wallet
    replayed: bool


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_wallet(self, owner_type: OwnerType, owner_id: str, currency: str) -> Wallet:
        async with self.db.transaction() as conn:
            wallet = await LedgerRepository(conn).insert_wallet(uuid.uuid4(), owner_type, owner_id, currency)
        if wallet is None:
            raise AlreadyExists(
                f"{owner_type.value} {owner_id} already has a {currency} wallet",
                reason="WALLET_ALREADY_EXISTS",
                metadata={"owner_id": owner_id, "currency": currency},
            )
        return wallet

    async def get_wallet(self, wallet_id: uuid.UUID) -> Wallet:
        async with self.db.transaction() as conn:
            wallet = await LedgerRepository(conn).get_wallet(wallet_id)
        if wallet is None:
            raise WalletNotFound(wallet_id)
        return wallet

    async def list_wallets(self, owner_type: OwnerType, owner_id: str) -> list[Wallet]:
        async with self.db.transaction() as conn:
            return await LedgerRepository(conn).list_wallets(owner_type, owner_id)

    async def system_wallet(self, account: SystemAccount, currency: str) -> Wallet:
        wallet_id = system_wallet_id(account, currency)
        async with self.db.transaction() as conn:
            repo = LedgerRepository(conn)
            wallet = await repo.get_wallet(wallet_id)
            if wallet is None:
                await repo.insert_wallet(wallet_id, OwnerType.SYSTEM, account.value, currency)
                wallet = await repo.get_wallet(wallet_id)
        assert wallet is not None
        return wallet

    async def fund(
        self, wallet_id: uuid.UUID, amount: int, currency: str, reference: str, description: str
    ) -> TransferResult:
        """Money entering the platform: funding account -> wallet."""
        funding = await self.system_wallet(SystemAccount.FUNDING, currency)
        return await self.transfer(
            TransferOrder(
                source_wallet_id=funding.wallet_id,
                destination_wallet_id=wallet_id,
                amount=amount,
                currency=currency,
                reference=f"funding:{reference}",
                kind=TransactionKind.FUNDING,
                description=description,
            )
        )

    async def transfer(self, order: TransferOrder) -> TransferResult:
        """One balanced ledger transaction, idempotent on the order's reference.

        Locks: the two wallet rows in wallet_id order, then the reference's unique-index
        entry (a concurrent request with the same reference waits for the wallets, then
        finds the reference taken and replays). A hot destination wallet serialises only
        its own row update and entry insert; nothing is retried, so contention costs
        waiting, never errors."""
        async with self.db.transaction() as conn:
            repo = LedgerRepository(conn)
            wallets = await repo.lock_wallets([order.source_wallet_id, order.destination_wallet_id])
            for wallet_id in (order.source_wallet_id, order.destination_wallet_id):
                if wallet_id not in wallets:
                    raise WalletNotFound(wallet_id)
            transaction_id = uuid.uuid4()
            if not await repo.claim_reference(transaction_id, order):
                return await self._replay(repo, order)
            source = wallets[order.source_wallet_id]
            destination = wallets[order.destination_wallet_id]
            check_transfer(order, source, destination)
            # Apply in lock order so the row updates follow the locks already held.
            updated = {}
            for wallet_id in sorted(wallets):
                amount = -order.amount if wallet_id == order.source_wallet_id else order.amount
                counterparty = order.destination_wallet_id if amount < 0 else order.source_wallet_id
                updated[wallet_id] = await repo.apply_entry(transaction_id, wallet_id, amount, counterparty)
        return TransferResult(
            transaction_id,
            updated[order.source_wallet_id],
            updated[order.destination_wallet_id],
            replayed=False,
        )

    async def _replay(self, repo: LedgerRepository, order: TransferOrder) -> TransferResult:
        recorded = await repo.recorded_transfer(order.reference)
        assert recorded is not None  # claim_reference found it taken
        transaction_id, first = recorded
        mismatched = reference_mismatches(order, first)
        if mismatched:
            raise ReferenceReused(
                f"reference {order.reference!r} was already used for a different transfer "
                f"(differs in {', '.join(mismatched)})",
                metadata={"reference": order.reference, "mismatched_fields": ",".join(mismatched)},
            )
        source = await repo.get_wallet(first.source_wallet_id)
        destination = await repo.get_wallet(first.destination_wallet_id)
        assert source is not None and destination is not None
        return TransferResult(transaction_id, source, destination, replayed=True)

    async def history(
        self, wallet_id: uuid.UUID, page_size: int, page_token: str
    ) -> tuple[list[dict[str, Any]], str]:
        cursor = paging.decode(page_token)
        before = None
        if cursor is not None:
            if len(cursor) != 2 or cursor[0] != str(wallet_id) or not isinstance(cursor[1], int):
                raise InvalidArgument(
                    "page_token belongs to another listing",
                    field_violations=[FieldViolation("page_token", "not for this wallet")],
                )
            before = cursor[1]
        size = paging.page_size(page_size)
        async with self.db.transaction() as conn:
            repo = LedgerRepository(conn)
            if await repo.get_wallet(wallet_id) is None:
                raise WalletNotFound(wallet_id)
            rows = await repo.list_entries(wallet_id, size + 1, before)
        next_token = ""
        if len(rows) > size:
            rows = rows[:size]
            next_token = paging.encode([str(wallet_id), rows[-1]["entry_id"]])
        return rows, next_token
