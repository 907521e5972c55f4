"""SQL for the ledger, on one connection inside the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from services.framework.outbox import Event, topic_for
from services.wallet.adapters.events import AGGREGATE, OUTBOX
from services.wallet.domain.batch import Accepted
from services.wallet.domain.model import (
    Hold,
    HoldState,
    OwnerType,
    TransactionKind,
    TransferOrder,
    Wallet,
    WalletState,
)

_WALLET_COLUMNS = (
    "wallet_id, owner_type, owner_id, currency, balance, available, pending, "
    "state, version, created_at, updated_at"
)


_HOLD_COLUMNS = (
    "h.hold_id, h.wallet_id, h.amount, h.captured_amount, h.reference, h.state, "
    "h.expires_at, h.created_at, w.currency"
)


def _hold(row: dict[str, Any]) -> Hold:
    return Hold(
        hold_id=row["hold_id"],
        wallet_id=row["wallet_id"],
        amount=row["amount"],
        captured_amount=row["captured_amount"],
        reference=row["reference"],
        state=HoldState(row["state"]),
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        currency=row["currency"],
    )


@dataclass(frozen=True)
class Leg:
    """One wallet's side of a movement: its entry and how its amounts change."""

    wallet_id: uuid.UUID
    amount: int  # the signed ledger entry (and the change of balance)
    available_delta: int
    pending_delta: int
    counterparty: uuid.UUID


def transfer_legs(order: TransferOrder) -> list[Leg]:
    return [
        Leg(order.source_wallet_id, -order.amount, -order.amount, 0, order.destination_wallet_id),
        Leg(order.destination_wallet_id, order.amount, order.amount, 0, order.source_wallet_id),
    ]


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


def _recorded(row: dict[str, Any]) -> tuple[uuid.UUID, TransferOrder]:
    """A ledger header as the transaction id and the order that recorded it."""
    return row["transaction_id"], TransferOrder(
        source_wallet_id=row["source_wallet_id"],
        destination_wallet_id=row["destination_wallet_id"],
        amount=row["amount"],
        currency=row["currency"],
        reference=row["reference"],
        kind=TransactionKind(row["kind"]),
        description=row["description"],
    )


OUTBOX_TOPIC = topic_for(AGGREGATE)

# The outbox rows of a batch (LedgerRepository.record_movements): two per movement, the
# source's then the destination's, as parallel arrays of event ids and serialised envelopes.
EventColumns = tuple[list[uuid.UUID], list[bytes]]

# A batch's writes: one statement whose text does not depend on the batch's size. Per
# movement `m` (in the batch's order `n`): its header, and the balance each of its two
# wallets has right after it; the legs, wallet deltas, entries and outbox keys follow.
_RECORD_MOVEMENTS = (
    "WITH m AS ("
    "  SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::uuid[],"
    "    %s::uuid[], %s::text[], %s::bigint[], %s::bigint[]) WITH ORDINALITY AS m(transaction_id,"
    "    reference, kind, currency, amount, source, destination, description, source_after,"
    "    destination_after, n)),"
    " header AS ("
    "  INSERT INTO ledger_transactions (transaction_id, reference, kind, currency, amount,"
    "    source_wallet_id, destination_wallet_id, description)"
    "  SELECT transaction_id, reference, kind, currency, amount, source, destination, description"
    "  FROM m ORDER BY n),"
    " legs AS ("
    "  SELECT m.n, l.leg, m.transaction_id, l.wallet_id, l.amount, l.balance_after, l.counterparty"
    "  FROM m CROSS JOIN LATERAL (VALUES (1, m.source, -m.amount, m.source_after, m.destination),"
    "    (2, m.destination, m.amount, m.destination_after, m.source))"
    "    AS l(leg, wallet_id, amount, balance_after, counterparty)),"
    " moved AS ("
    "  UPDATE wallets w SET balance = w.balance + d.delta, available = w.available + d.delta,"
    "    version = w.version + d.movements, updated_at = now()"
    "  FROM (SELECT wallet_id, sum(amount)::bigint AS delta, count(*) AS movements FROM legs"
    "    GROUP BY wallet_id) d"
    "  WHERE w.wallet_id = d.wallet_id"
    f"  RETURNING {', '.join('w.' + c.strip() for c in _WALLET_COLUMNS.split(','))}),"
    " entries AS ("
    "  INSERT INTO wallet_transactions (transaction_id, wallet_id, amount, balance_after,"
    "    counterparty_wallet_id)"
    "  SELECT transaction_id, wallet_id, amount, balance_after, counterparty FROM legs"
    "  ORDER BY n, wallet_id),"
    " outbox_rows AS ("
    "  INSERT INTO outbox (event_id, topic, message_key, envelope)"
    "  SELECT e.event_id, %s, l.wallet_id::text, e.envelope"
    "  FROM unnest(%s::uuid[], %s::bytea[]) WITH ORDINALITY AS e(event_id, envelope, k)"
    "  JOIN legs l ON l.n = (e.k + 1) / 2 AND l.leg = 2 - e.k %% 2"
    "  ORDER BY e.k)"
    " SELECT * FROM moved"
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

    async def lock_for_batch(
        self, wallet_ids: Sequence[uuid.UUID], references: Sequence[str]
    ) -> tuple[dict[uuid.UUID, Wallet], dict[str, tuple[uuid.UUID, TransferOrder]], datetime]:
        """A batch's reads, in one round trip (a pipeline): every wallet it names, locked as
        `lock_wallets` does (ascending wallet_id, NO KEY UPDATE); then the references already
        recorded, read by a second statement, so after the locks and with a snapshot that
        includes whatever the lock waits let commit; and the transaction's time, which
        `updated_at` of each wallet it writes will show."""
        async with self.conn.pipeline():
            locking = await self.conn.execute(
                f"SELECT {_WALLET_COLUMNS} FROM wallets WHERE wallet_id = ANY(%s::uuid[]) "
                f"ORDER BY wallet_id FOR NO KEY UPDATE",
                (sorted(set(wallet_ids)),),
                prepare=True,
            )
            finding = await self.conn.execute(
                "SELECT transaction_id, reference, kind, currency, amount, source_wallet_id, "
                "destination_wallet_id, description, now() AS at FROM ledger_transactions "
                "WHERE reference = ANY(%s::text[]) "
                "UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, now()",
                (list(set(references)),),
                prepare=True,
            )
            wallets = {row["wallet_id"]: _wallet(row) for row in await locking.fetchall()}
            rows = await finding.fetchall()
        recorded = {row["reference"]: _recorded(row) for row in rows if row["reference"] is not None}
        return wallets, recorded, rows[0]["at"]  # now(): the same in every row

    async def record_movements(
        self, movements: Sequence[Accepted], final: Sequence[Wallet], events: EventColumns
    ) -> list[Wallet]:
        """Writes a batch's accepted movements in one statement: their ledger headers, each
        wallet's amounts once (the sum of its movements, its version raised by their number),
        two entries per movement with the balance each leaves, and its two events (already
        serialised by the caller) in the outbox, all in the batch's order, so entry ids and
        outbox positions follow each wallet's versions.

        The statement's text does not depend on the batch's size (arrays, not VALUES
        lists), so psycopg prepares it once per connection. A reference taken meanwhile
        by another transaction is a unique violation: the whole batch fails and the
        caller runs its orders one by one. The wallets written must be exactly `final`,
        which the caller computed under the same locks; otherwise this raises rather than
        commit anything it did not mean."""
        columns: list[list[Any]] = [[] for _ in range(10)]
        for m in movements:
            o = m.order
            row = (
                m.transaction_id,
                o.reference,
                o.kind.value,
                o.currency,
                o.amount,
                o.source_wallet_id,
                o.destination_wallet_id,
                o.description,
                m.source.balance,
                m.destination.balance,
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        event_ids, envelopes = events
        if len(event_ids) != 2 * len(movements) or len(envelopes) != len(event_ids):
            raise RuntimeError("a batch needs exactly two events per movement")
        cur = await self.conn.execute(
            _RECORD_MOVEMENTS, [*columns, OUTBOX_TOPIC, event_ids, envelopes], prepare=True
        )
        written = {row["wallet_id"]: _wallet(row) for row in await cur.fetchall()}
        expected = {w.wallet_id: w for w in final}
        if written.keys() != expected.keys() or any(
            (w.balance, w.available, w.pending, w.version)
            != (expected[i].balance, expected[i].available, expected[i].pending, expected[i].version)
            for i, w in written.items()
        ):
            raise RuntimeError("a batch wrote wallets other than the ones it computed")
        return [written[i] for i in sorted(written)]

    async def recorded_transfer(self, reference: str) -> tuple[uuid.UUID, TransferOrder] | None:
        cur = await self.conn.execute(
            "SELECT transaction_id, reference, kind, currency, amount, source_wallet_id, "
            "destination_wallet_id, description FROM ledger_transactions WHERE reference = %s",
            (reference,),
        )
        row = await cur.fetchone()
        return None if row is None else _recorded(row)

    async def record_movement(
        self,
        transaction_id: uuid.UUID,
        order: TransferOrder,
        legs: list[Leg],
        hold_id: uuid.UUID | None = None,
        events: Sequence[Event] = (),
    ) -> list[Wallet] | None:
        """One statement: the ledger header, each locked wallet's new amounts, each
        wallet's entry and the movement's events in the outbox. None (and nothing
        written) when another transaction took the reference first; the caller replays
        that one. The events were built from the locked wallets; each must carry the
        version its wallet now has, or the transaction fails rather than publish a
        wrong event."""
        values = ", ".join(["(%s::uuid, %s::bigint, %s::bigint, %s::bigint, %s::uuid)"] * len(legs))
        params: list[Any] = [
            transaction_id,
            order.reference,
            order.kind.value,
            order.currency,
            order.amount,
            order.source_wallet_id,
            order.destination_wallet_id,
            order.description,
            hold_id,
        ]
        for leg in legs:
            params += [leg.wallet_id, leg.amount, leg.available_delta, leg.pending_delta, leg.counterparty]
        outbox, outbox_params = OUTBOX.insert_cte(events, "EXISTS (SELECT 1 FROM header)")
        cur = await self.conn.execute(
            "WITH header AS ("
            "  INSERT INTO ledger_transactions (transaction_id, reference, kind, currency, amount,"
            "    source_wallet_id, destination_wallet_id, description, hold_id)"
            "  VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (reference) DO NOTHING"
            "  RETURNING transaction_id),"
            " moved AS ("
            "  UPDATE wallets w SET balance = w.balance + m.amount,"
            "    available = w.available + m.available_delta, pending = w.pending + m.pending_delta,"
            "    version = w.version + 1, updated_at = now()"
            f"  FROM (VALUES {values}) AS m(wallet_id, amount, available_delta, pending_delta,"
            "    counterparty)"
            "  WHERE w.wallet_id = m.wallet_id AND EXISTS (SELECT 1 FROM header)"
            f"  RETURNING {', '.join('w.' + c.strip() for c in _WALLET_COLUMNS.split(','))},"
            "    m.amount AS entry_amount, m.counterparty),"
            " entries AS ("
            "  INSERT INTO wallet_transactions (transaction_id, wallet_id, amount, balance_after,"
            "    counterparty_wallet_id)"
            "  SELECT (SELECT transaction_id FROM header), wallet_id, entry_amount, balance,"
            "    counterparty FROM moved ORDER BY wallet_id)"
            f"{outbox} SELECT * FROM moved",
            params + outbox_params,
        )
        rows = await cur.fetchall()
        if not rows:
            return None
        wallets = [_wallet(r) for r in rows]
        announced = {(e.aggregate_id, e.aggregate_version) for e in events}
        if events and not all((str(w.wallet_id), w.version) in announced for w in wallets):
            raise RuntimeError("a movement's events do not match the wallets it wrote")
        return wallets

    async def reserve(self, wallet_id: uuid.UUID, amount: int) -> Wallet:
        """Moves `amount` from available to pending (negative to give it back)."""
        cur = await self.conn.execute(
            f"UPDATE wallets SET available = available - %s, pending = pending + %s, "
            f"version = version + 1, updated_at = now() WHERE wallet_id = %s "
            f"RETURNING {_WALLET_COLUMNS}",
            (amount, amount, wallet_id),
        )
        row = await cur.fetchone()
        assert row is not None
        return _wallet(row)

    async def set_state(self, wallet_id: uuid.UUID, state: WalletState, reason: str) -> Wallet:
        cur = await self.conn.execute(
            f"UPDATE wallets SET state = %s, state_reason = %s, version = version + 1, "
            f"updated_at = now() WHERE wallet_id = %s RETURNING {_WALLET_COLUMNS}",
            (state.value, reason, wallet_id),
        )
        row = await cur.fetchone()
        assert row is not None
        return _wallet(row)

    async def insert_hold(
        self, hold_id: uuid.UUID, wallet_id: uuid.UUID, amount: int, reference: str, expires_at: datetime
    ) -> bool:
        cur = await self.conn.execute(
            "INSERT INTO wallet_holds (hold_id, wallet_id, reference, amount, expires_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (reference) DO NOTHING RETURNING hold_id",
            (hold_id, wallet_id, reference, amount, expires_at),
        )
        return await cur.fetchone() is not None

    async def get_hold(
        self, hold_id: uuid.UUID | None = None, *, reference: str | None = None, lock: bool = False
    ) -> Hold | None:
        where = "h.hold_id = %s" if hold_id is not None else "h.reference = %s"
        cur = await self.conn.execute(
            f"SELECT {_HOLD_COLUMNS} FROM wallet_holds h JOIN wallets w USING (wallet_id) "
            f"WHERE {where}{' FOR UPDATE OF h' if lock else ''}",
            (hold_id if hold_id is not None else reference,),
        )
        row = await cur.fetchone()
        return _hold(row) if row else None

    async def resolve_hold(
        self,
        hold_id: uuid.UUID,
        state: HoldState,
        captured_amount: int = 0,
        capture_transaction_id: uuid.UUID | None = None,
    ) -> Hold:
        await self.conn.execute(
            "UPDATE wallet_holds SET state = %s, captured_amount = %s, "
            "capture_transaction_id = %s, resolved_at = now() WHERE hold_id = %s AND state = 'ACTIVE'",
            (state.value, captured_amount, capture_transaction_id, hold_id),
        )
        hold = await self.get_hold(hold_id)
        assert hold is not None
        return hold

    async def expired_holds(self, limit: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
        cur = await self.conn.execute(
            "SELECT hold_id, wallet_id FROM wallet_holds WHERE state = 'ACTIVE' "
            "AND expires_at <= now() ORDER BY expires_at LIMIT %s",
            (limit,),
        )
        return [(r["hold_id"], r["wallet_id"]) for r in await cur.fetchall()]

    async def reconcile(self) -> dict[str, Any]:
        """Σ entries = balance per wallet, Σ active holds = pending per wallet, and every
        ledger transaction sums to zero; read in one snapshot by the caller."""
        cur = await self.conn.execute(
            "SELECT w.wallet_id FROM wallets w "
            "LEFT JOIN (SELECT wallet_id, sum(amount) AS total FROM wallet_transactions "
            "           GROUP BY wallet_id) e USING (wallet_id) "
            "LEFT JOIN (SELECT wallet_id, sum(amount) AS held FROM wallet_holds "
            "           WHERE state = 'ACTIVE' GROUP BY wallet_id) h USING (wallet_id) "
            "WHERE w.balance <> coalesce(e.total, 0) OR w.pending <> coalesce(h.held, 0) "
            "ORDER BY w.wallet_id"
        )
        mismatched = [r["wallet_id"] for r in await cur.fetchall()]
        cur = await self.conn.execute(
            "SELECT transaction_id FROM wallet_transactions GROUP BY transaction_id "
            "HAVING sum(amount) <> 0 ORDER BY transaction_id"
        )
        unbalanced = [r["transaction_id"] for r in await cur.fetchall()]
        cur = await self.conn.execute(
            "SELECT (SELECT count(*) FROM wallets) AS wallets, "
            "(SELECT count(*) FROM ledger_transactions) AS transactions"
        )
        counts = await cur.fetchone()
        assert counts is not None
        return {"mismatched": mismatched, "unbalanced": unbalanced, **counts}

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
