"""The wallet service's use cases, each one database transaction."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from services.framework import paging
from services.framework.db import Database
from services.framework.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument
from services.framework.outbox import Event
from services.wallet.adapters.balance_cache import BalanceCache
from services.wallet.adapters.events import (
    OUTBOX,
    STATE_EVENTS,
    batch_event_columns,
    entry_event,
    hold_event,
    moved,
    wallet_event,
)
from services.wallet.adapters.repository import LedgerRepository, Leg, transfer_legs
from services.wallet.domain.batch import Accepted, Outcome, Replayed, plan_batch
from services.wallet.domain.model import (
    Hold,
    HoldNotActive,
    HoldNotFound,
    HoldState,
    OwnerType,
    ReferenceReused,
    SystemAccount,
    TransactionKind,
    TransferOrder,
    Wallet,
    WalletNotFound,
    WalletState,
    check_capture,
    check_place_hold,
    check_state_change,
    check_transfer,
    reference_mismatches,
    system_wallet_id,
)
from services.wallet.service_layer.batching import FALLBACKS, Batcher

log = logging.getLogger("interpay.wallet.ledger")


@dataclass(frozen=True)
class TransferResult:
    transaction_id: uuid.UUID
    source: Wallet
    destination: Wallet
    replayed: bool


def movement_events(
    wallets: dict[uuid.UUID, Wallet],
    transaction_id: uuid.UUID,
    order: TransferOrder,
    legs: list[Leg],
    captured: Hold | None = None,
) -> list[Event]:
    """One event per wallet a movement changes, from the wallets locked for it: the
    entry it records, or for the payer of a captured hold, the hold captured."""
    at = datetime.now(UTC)
    events = []
    for leg in legs:
        after = moved(wallets[leg.wallet_id], leg.amount, leg.available_delta, leg.pending_delta, at)
        if captured is not None and leg.wallet_id == captured.wallet_id:
            events.append(hold_event(captured, after.version))
        else:
            events.append(entry_event(after, transaction_id, order, leg.amount, leg.counterparty, at))
    return events


@dataclass(frozen=True)
class Reconciliation:
    wallets_checked: int
    transactions_checked: int
    mismatched_wallet_ids: list[uuid.UUID]
    unbalanced_transaction_ids: list[uuid.UUID]


def _result(outcome: Outcome) -> TransferResult | BaseException:
    if isinstance(outcome, Accepted):
        return TransferResult(outcome.transaction_id, outcome.source, outcome.destination, replayed=False)
    if isinstance(outcome, Replayed):
        return TransferResult(outcome.transaction_id, outcome.source, outcome.destination, replayed=True)
    return outcome


class Ledger:
    """The wallet's use cases. `batch_size` > 1 coalesces concurrent transfers into
    shared transactions of at most that many orders (service_layer/batching.py); 1 runs
    every transfer on its own."""

    def __init__(self, db: Database, cache: BalanceCache | None = None, batch_size: int = 1) -> None:
        self.db = db
        self.cache = cache
        self._settling: set[asyncio.Task[None]] = set()  # cache writes that end after a batch
        self.batcher: Batcher[TransferOrder, TransferResult] | None = (
            Batcher(self.transfer_many, batch_size) if batch_size > 1 else None
        )

    @asynccontextmanager
    async def _writing(
        self, wallet_ids: list[uuid.UUID], *, settle_later: bool = False
    ) -> AsyncIterator[tuple[LedgerRepository, list[Wallet]]]:
        """One transaction that may change the named wallets. The use case appends each
        wallet it changed; the cache hears of the writers before the transaction and of
        the committed snapshots after it (see adapters/balance_cache.py).

        `settle_later` tells the cache after returning instead of before: the wallets stay
        marked as being written until then, so a read in between goes to PostgreSQL and
        sees the commit; a batch answers its callers and the next batch starts without
        waiting for Redis."""
        changed: list[Wallet] = []
        announced = self.cache is not None and await self.cache.begin_write(wallet_ids)
        try:
            async with self.db.transaction() as conn:
                yield LedgerRepository(conn), changed
        except BaseException:
            changed.clear()
            raise
        finally:
            if announced and self.cache is not None:
                settle = self.cache.end_write(wallet_ids, changed)
                if settle_later:
                    task = asyncio.get_running_loop().create_task(settle)
                    self._settling.add(task)
                    task.add_done_callback(self._settling.discard)
                else:
                    await settle

    async def settled(self) -> None:
        """Waits for the cache writes that batches left to finish after them."""
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def create_wallet(self, owner_type: OwnerType, owner_id: str, currency: str) -> Wallet:
        async with self.db.transaction() as conn:
            wallet = await LedgerRepository(conn).insert_wallet(uuid.uuid4(), owner_type, owner_id, currency)
            if wallet is not None:
                await OUTBOX.add(conn, [wallet_event(wallet, "WalletCreated")])
        if wallet is None:
            raise AlreadyExists(
                f"{owner_type.value} {owner_id} already has a {currency} wallet",
                reason="WALLET_ALREADY_EXISTS",
                metadata={"owner_id": owner_id, "currency": currency},
            )
        return wallet

    async def get_wallet(self, wallet_id: uuid.UUID) -> Wallet:
        if self.cache and (cached := await self.cache.get(wallet_id)) is not None:
            return cached
        async with self.db.transaction() as conn:
            wallet = await LedgerRepository(conn).get_wallet(wallet_id)
        if wallet is None:
            raise WalletNotFound(wallet_id)
        if self.cache:
            await self.cache.fill(wallet)
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
                created = await repo.insert_wallet(wallet_id, OwnerType.SYSTEM, account.value, currency)
                if created is not None:
                    await OUTBOX.add(conn, [wallet_event(created, "WalletCreated")])
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

        With a batcher (the service's default), concurrent transfers share one database
        transaction (`transfer_many`); alone, or without one, `_transfer_one`. Either way
        the answer is the one this order would get from `_transfer_one` run in arrival
        order."""
        if self.batcher is not None and order.source_wallet_id != order.destination_wallet_id:
            return await self.batcher.submit(order)
        return await self._transfer_one(order)

    async def transfer_many(
        self, orders: Sequence[TransferOrder], contexts: Sequence[contextvars.Context] = ()
    ) -> list[TransferResult | BaseException]:
        """Decides the orders as one batch: one outcome per order, in order, each what
        `_transfer_one` would answer had the orders run one after another (see
        domain/batch.py for the rules). `contexts` are the callers' contexts, for the
        traces their events carry.

        One transaction (`_transfer_batch`). A lone order takes the one-transfer path,
        which is fewer round trips. If the batch fails as a whole (a reference taken
        meanwhile by a writer outside the batch, a lost connection, anything
        unexpected), nothing of it committed, or everything did, and its orders run
        again one by one through `_transfer_one`: each then gets its own answer (a
        replay, if the batch had in fact committed), never a wrong one."""
        if len(orders) == 1:
            return [await self._one_outcome(orders[0], contexts[0] if contexts else None)]
        try:
            return await self._transfer_batch(orders, contexts)
        except Exception:
            log.warning(
                "a transfer batch failed as a whole; its orders run one by one",
                exc_info=True,
                extra={"orders": len(orders)},
            )
            FALLBACKS.inc()
            return [
                await self._one_outcome(order, contexts[i] if i < len(contexts) else None)
                for i, order in enumerate(orders)
            ]

    async def _one_outcome(
        self, order: TransferOrder, context: contextvars.Context | None
    ) -> TransferResult | BaseException:
        """`_transfer_one`'s answer, the work done in the caller's context (so its trace
        covers the transaction and its events carry it)."""
        try:
            if context is None:
                return await self._transfer_one(order)
            return await asyncio.get_running_loop().create_task(self._transfer_one(order), context=context)
        except Exception as exc:  # the caller's answer, raised in its own request
            return exc

    async def _transfer_batch(
        self, orders: Sequence[TransferOrder], contexts: Sequence[contextvars.Context]
    ) -> list[TransferResult | BaseException]:
        """One READ COMMITTED transaction for the whole batch, in the ledger's lock order:

        1. every wallet the orders name, locked in ascending wallet_id order (as every
           writer locks), then the references already recorded (one round trip);
        2. the orders judged in arrival order against running balances (plan_batch);
        3. the accepted movements written by one statement, then COMMIT.

        The balance cache hears of every wallet of the batch before the transaction and
        of the committed snapshots after it, one Redis call each for the whole batch."""
        wallet_ids = sorted({w for o in orders for w in (o.source_wallet_id, o.destination_wallet_id)})
        async with self._writing(wallet_ids, settle_later=True) as (repo, changed):
            wallets, recorded, at = await repo.lock_for_batch(wallet_ids, [o.reference for o in orders])
            plan = plan_batch(orders, wallets, recorded, at)
            if plan.accepted:
                events = batch_event_columns(plan.accepted, wallets, contexts, at)
                changed.extend(await repo.record_movements(plan.accepted, list(plan.final.values()), events))
        return [_result(outcome) for outcome in plan.outcomes]

    async def _transfer_one(self, order: TransferOrder) -> TransferResult:
        """One transfer, one transaction.

        Locks: the two wallet rows in wallet_id order, then the reference's unique-index
        entry (a concurrent request with the same reference waits for the wallets, then
        finds the reference taken and replays). A hot destination wallet serialises only
        its own row update and entry insert; nothing is retried, so contention costs
        waiting, never errors."""
        wallet_ids = [order.source_wallet_id, order.destination_wallet_id]
        async with self._writing(wallet_ids) as (repo, changed):
            wallets = await repo.lock_wallets(wallet_ids)
            for wallet_id in wallet_ids:
                if wallet_id not in wallets:
                    raise WalletNotFound(wallet_id)
            try:
                check_transfer(order, wallets[order.source_wallet_id], wallets[order.destination_wallet_id])
            except FailedPrecondition:
                # A retry of a transfer that already ran (and, say, emptied the wallet) is a
                # replay, not a refusal. Only refusals pay for this lookup.
                if await repo.recorded_transfer(order.reference) is not None:
                    return await self._replay(repo, order)
                raise
            transaction_id = uuid.uuid4()
            legs = transfer_legs(order)
            written = await repo.record_movement(
                transaction_id, order, legs, events=movement_events(wallets, transaction_id, order, legs)
            )
            if written is None:
                return await self._replay(repo, order)
            changed.extend(written)
        updated = {w.wallet_id: w for w in written}
        return TransferResult(
            transaction_id,
            updated[order.source_wallet_id],
            updated[order.destination_wallet_id],
            replayed=False,
        )

    async def _replay(self, repo: LedgerRepository, order: TransferOrder) -> TransferResult:
        recorded = await repo.recorded_transfer(order.reference)
        assert recorded is not None  # record_movement found the reference taken
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

    # -- holds --------------------------------------------------------------------------
    async def place_hold(
        self, wallet_id: uuid.UUID, amount: int, currency: str, reference: str, expires_at: datetime
    ) -> Hold:
        """Reserves funds; idempotent on `reference` (a retry returns the first hold)."""
        async with self._writing([wallet_id]) as (repo, changed):
            wallets = await repo.lock_wallets([wallet_id])
            if wallet_id not in wallets:
                raise WalletNotFound(wallet_id)
            hold_id = uuid.uuid4()
            if not await repo.insert_hold(hold_id, wallet_id, amount, reference, expires_at):
                first = await repo.get_hold(reference=reference)
                assert first is not None
                mismatched = [
                    name
                    for name, same in (
                        ("wallet_id", first.wallet_id == wallet_id),
                        ("amount", first.amount == amount),
                        ("currency", first.currency == currency),
                    )
                    if not same
                ]
                if mismatched:
                    raise ReferenceReused(
                        f"reference {reference!r} already placed a different hold "
                        f"(differs in {', '.join(mismatched)})",
                        metadata={"reference": reference, "mismatched_fields": ",".join(mismatched)},
                    )
                return first
            check_place_hold(wallets[wallet_id], amount, currency)
            wallet = await repo.reserve(wallet_id, amount)
            changed.append(wallet)
            hold = await repo.get_hold(hold_id)
            assert hold is not None
            await OUTBOX.add(repo.conn, [hold_event(hold, wallet.version)])
        return hold

    @staticmethod
    async def _locked_hold(repo: LedgerRepository, hold_id: uuid.UUID) -> Hold:
        """The hold row, locked; taken only after its wallets, in the ledger's lock order."""
        hold = await repo.get_hold(hold_id, lock=True)
        if hold is None:
            raise HoldNotFound(hold_id)
        return hold

    async def get_hold(self, hold_id: uuid.UUID) -> Hold:
        async with self.db.transaction() as conn:
            hold = await LedgerRepository(conn).get_hold(hold_id)
        if hold is None:
            raise HoldNotFound(hold_id)
        return hold

    async def capture_hold(
        self, hold_id: uuid.UUID, destination_wallet_id: uuid.UUID, amount: int, currency: str, reference: str
    ) -> tuple[Hold, uuid.UUID]:
        """Moves `amount` of the hold to the destination and releases the rest, once.

        Locks in the ledger's one order: both wallets (ascending id), then the hold row."""
        hold = await self.get_hold(hold_id)
        wallet_ids = [hold.wallet_id, destination_wallet_id]
        async with self._writing(wallet_ids) as (repo, changed):
            wallets = await repo.lock_wallets(wallet_ids)
            if destination_wallet_id not in wallets:
                raise WalletNotFound(destination_wallet_id)
            hold = await self._locked_hold(repo, hold_id)
            order = TransferOrder(
                hold.wallet_id, destination_wallet_id, amount, currency, reference, TransactionKind.CAPTURE
            )
            recorded = await repo.recorded_transfer(reference)
            if recorded is not None:
                transaction_id, first = recorded
                mismatched = reference_mismatches(order, first)
                if mismatched or hold.state is not HoldState.CAPTURED:
                    raise ReferenceReused(
                        f"reference {reference!r} was already used for another movement",
                        metadata={
                            "reference": reference,
                            "mismatched_fields": ",".join(mismatched or ["hold_id"]),
                        },
                    )
                return hold, transaction_id
            source, destination = wallets[hold.wallet_id], wallets[destination_wallet_id]
            check_capture(hold, amount, currency, source, destination, datetime.now(UTC))
            transaction_id = uuid.uuid4()
            legs = [
                # The payer's balance drops by the capture; its pending by the whole hold,
                # the uncaptured rest of which returns to available.
                Leg(source.wallet_id, -amount, hold.amount - amount, -hold.amount, destination_wallet_id),
                Leg(destination_wallet_id, amount, amount, 0, source.wallet_id),
            ]
            captured = replace(hold, state=HoldState.CAPTURED, captured_amount=amount)
            written = await repo.record_movement(
                transaction_id,
                order,
                legs,
                hold_id=hold_id,
                events=movement_events(wallets, transaction_id, order, legs, captured),
            )
            if written is None:
                raise ReferenceReused(
                    f"reference {reference!r} was just used for another movement",
                    metadata={"reference": reference, "mismatched_fields": "hold_id"},
                )
            changed.extend(written)
            hold = await repo.resolve_hold(hold_id, HoldState.CAPTURED, amount, transaction_id)
        return hold, transaction_id

    async def release_hold(self, hold_id: uuid.UUID, *, expired: bool = False) -> Hold:
        """Returns an active hold's funds to available. Releasing a released hold again
        returns it unchanged (retry-safe); a captured or expired hold is refused."""
        hold = await self.get_hold(hold_id)
        async with self._writing([hold.wallet_id]) as (repo, changed):
            await repo.lock_wallets([hold.wallet_id])
            hold = await self._locked_hold(repo, hold_id)
            if hold.state is not HoldState.ACTIVE:
                if hold.state is HoldState.RELEASED and not expired:
                    return hold
                if expired:
                    return hold  # someone resolved it first; nothing to expire
                raise HoldNotActive(hold, "released")
            if expired and hold.expires_at > datetime.now(UTC):
                return hold
            wallet = await repo.reserve(hold.wallet_id, -hold.amount)
            changed.append(wallet)
            hold = await repo.resolve_hold(hold_id, HoldState.EXPIRED if expired else HoldState.RELEASED)
            await OUTBOX.add(repo.conn, [hold_event(hold, wallet.version)])
        return hold

    async def expire_holds(self, batch: int = 100) -> int:
        """Releases the holds past their expiry; run periodically by every replica (each
        hold is re-checked under its locks, so replicas racing on one hold are harmless)."""
        async with self.db.transaction() as conn:
            due = await LedgerRepository(conn).expired_holds(batch)
        for hold_id, _ in due:
            await self.release_hold(hold_id, expired=True)
        return len(due)

    # -- wallet lifecycle ---------------------------------------------------------------
    async def change_state(self, wallet_id: uuid.UUID, target: WalletState, reason: str) -> Wallet:
        async with self._writing([wallet_id]) as (repo, changed):
            wallets = await repo.lock_wallets([wallet_id])
            if wallet_id not in wallets:
                raise WalletNotFound(wallet_id)
            wallet = wallets[wallet_id]
            check_state_change(wallet, target)
            if wallet.state is target:
                return wallet  # already there: retry-safe
            wallet = await repo.set_state(wallet_id, target, reason)
            changed.append(wallet)
            await OUTBOX.add(repo.conn, [wallet_event(wallet, STATE_EVENTS[target])])
        return wallet

    # -- reconciliation -----------------------------------------------------------------
    async def reconcile(self) -> Reconciliation:
        async with self.db.snapshot() as conn:  # balances and entries as of one instant
            found = await LedgerRepository(conn).reconcile()
        return Reconciliation(
            found["wallets"], found["transactions"], found["mismatched"], found["unbalanced"]
        )
