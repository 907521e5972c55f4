"""SQL for settlements, their lines and the carried deficit, on one connection inside the
caller's transaction."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from services.merchants.domain.settlement import (
    LineKind,
    Settlement,
    SettlementLine,
    SettlementState,
    Totals,
)

_COLUMNS = (
    "settlement_id, merchant_id, settlement_date, currency, gross_captured_minor, refunds_minor, "
    "fees_minor, net_minor, carried_in_minor, payout_minor, carried_out_minor, state, payout_id, "
    "source_wallet_id, payout_account, failure_reason, created_at, updated_at"
)


def _settlement(row: dict[str, Any]) -> Settlement:
    return Settlement(
        settlement_id=row["settlement_id"],
        merchant_id=row["merchant_id"],
        settlement_date=row["settlement_date"],
        currency=row["currency"],
        gross_captured_minor=row["gross_captured_minor"],
        refunds_minor=row["refunds_minor"],
        fees_minor=row["fees_minor"],
        net_minor=row["net_minor"],
        carried_in_minor=row["carried_in_minor"],
        payout_minor=row["payout_minor"],
        carried_out_minor=row["carried_out_minor"],
        state=SettlementState(row["state"]),
        payout_id=row["payout_id"],
        source_wallet_id=row["source_wallet_id"],
        payout_account=row["payout_account"],
        failure_reason=row["failure_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class SettlementRepository:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    async def lock_merchant_carry(self, merchant_id: uuid.UUID) -> int:
        """Locks the merchant's carry row (creating it), serialising its settlements, and
        returns the deficit carried so far (<= 0)."""
        await self.conn.execute(
            "INSERT INTO settlement_carry (merchant_id) VALUES (%s) ON CONFLICT DO NOTHING", (merchant_id,)
        )
        cur = await self.conn.execute(
            "SELECT carried_minor FROM settlement_carry WHERE merchant_id = %s FOR UPDATE", (merchant_id,)
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row["carried_minor"])

    async def set_carry(self, merchant_id: uuid.UUID, carried_minor: int) -> None:
        await self.conn.execute(
            "UPDATE settlement_carry SET carried_minor = %s WHERE merchant_id = %s",
            (carried_minor, merchant_id),
        )

    async def unsettled_lines(
        self, merchant_id: uuid.UUID, through: date, currency: str
    ) -> list[tuple[uuid.UUID, SettlementLine]]:
        """The merchant's lines of `through` and of earlier days not settled yet, locked."""
        cur = await self.conn.execute(
            "SELECT event_id, kind, amount_minor, fee_minor FROM settlement_lines "
            "WHERE merchant_id = %s AND settlement_date <= %s AND settlement_id IS NULL AND currency = %s "
            "ORDER BY occurred_at, event_id FOR UPDATE",
            (merchant_id, through, currency),
        )
        return [
            (r["event_id"], SettlementLine(LineKind(r["kind"]), r["amount_minor"], r["fee_minor"]))
            for r in await cur.fetchall()
        ]

    async def insert(
        self,
        settlement_id: uuid.UUID,
        merchant_id: uuid.UUID,
        day: date,
        currency: str,
        sums: Totals,
        state: SettlementState,
        payout_id: uuid.UUID | None,
        source_wallet_id: uuid.UUID | None,
        payout_account: dict[str, str] | None,
        line_ids: list[uuid.UUID],
    ) -> Settlement:
        cur = await self.conn.execute(
            "INSERT INTO merchant_settlements (settlement_id, merchant_id, settlement_date, currency, "  # noqa: S608
            "gross_captured_minor, refunds_minor, fees_minor, net_minor, carried_in_minor, payout_minor, "
            "carried_out_minor, state, payout_id, source_wallet_id, payout_account) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            f"RETURNING {_COLUMNS}",
            (
                settlement_id,
                merchant_id,
                day,
                currency,
                sums.gross_captured,
                sums.refunds,
                sums.fees,
                sums.net,
                sums.carried_in,
                sums.payout,
                sums.carried_out,
                state.value,
                payout_id,
                source_wallet_id,
                Jsonb(payout_account) if payout_account is not None else None,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        await self.conn.execute(
            "UPDATE settlement_lines SET settlement_id = %s "
            "WHERE event_id = ANY(%s) AND settlement_id IS NULL",
            (settlement_id, line_ids),
        )
        return _settlement(row)

    async def for_day(self, merchant_id: uuid.UUID, day: date) -> Settlement | None:
        cur = await self.conn.execute(
            f"SELECT {_COLUMNS} FROM merchant_settlements "  # noqa: S608
            "WHERE merchant_id = %s AND settlement_date = %s",
            (merchant_id, day),
        )
        row = await cur.fetchone()
        return _settlement(row) if row else None

    async def get(self, settlement_id: uuid.UUID, *, lock: bool = False) -> Settlement | None:
        cur = await self.conn.execute(
            f"SELECT {_COLUMNS} FROM merchant_settlements WHERE settlement_id = %s"  # noqa: S608
            f"{' FOR UPDATE' if lock else ''}",
            (settlement_id,),
        )
        row = await cur.fetchone()
        return _settlement(row) if row else None

    async def set_outcome(
        self, settlement_id: uuid.UUID, state: SettlementState, failure_reason: str
    ) -> bool:
        """Moves a PENDING settlement to its payout's outcome; False if it had already moved."""
        cur = await self.conn.execute(
            "UPDATE merchant_settlements SET state = %s, failure_reason = %s, updated_at = now() "
            "WHERE settlement_id = %s AND state = 'PENDING'",
            (state.value, failure_reason, settlement_id),
        )
        return cur.rowcount == 1

    async def pending(self, limit: int) -> list[Settlement]:
        cur = await self.conn.execute(
            f"SELECT {_COLUMNS} FROM merchant_settlements "  # noqa: S608
            "WHERE state = 'PENDING' ORDER BY updated_at LIMIT %s",
            (limit,),
        )
        return [_settlement(r) for r in await cur.fetchall()]

    async def page(
        self, merchant_id: uuid.UUID, limit: int, after: tuple[date, uuid.UUID] | None
    ) -> list[Settlement]:
        cur = await self.conn.execute(
            f"SELECT {_COLUMNS} FROM merchant_settlements WHERE merchant_id = %(merchant)s "  # noqa: S608
            "AND (%(day)s::date IS NULL OR (settlement_date, settlement_id) < (%(day)s, %(id)s::uuid)) "
            "ORDER BY settlement_date DESC, settlement_id DESC LIMIT %(limit)s",
            {
                "merchant": merchant_id,
                "day": after[0] if after else None,
                "id": after[1] if after else None,
                "limit": limit,
            },
        )
        return [_settlement(r) for r in await cur.fetchall()]

    async def merchants_to_settle(self, through: date) -> list[uuid.UUID]:
        """ACTIVE or SUSPENDED merchants with lines of `through` or earlier not settled yet,
        or with a settlement of `through` already."""
        cur = await self.conn.execute(
            "SELECT m.merchant_id FROM merchants m WHERE m.state IN ('ACTIVE', 'SUSPENDED') AND ("
            "EXISTS (SELECT 1 FROM settlement_lines l WHERE l.merchant_id = m.merchant_id "
            "AND l.settlement_id IS NULL AND l.settlement_date <= %(day)s) OR "
            "EXISTS (SELECT 1 FROM merchant_settlements s WHERE s.merchant_id = m.merchant_id "
            "AND s.settlement_date = %(day)s)) ORDER BY m.merchant_id",
            {"day": through},
        )
        return [r["merchant_id"] for r in await cur.fetchall()]

    async def unsettled_days(self, through: date) -> list[tuple[uuid.UUID, date, bool]]:
        """(merchant, day, whether that day has a settlement already) for every day up to
        `through` with lines not settled yet, oldest first per merchant."""
        cur = await self.conn.execute(
            "SELECT DISTINCT l.merchant_id, l.settlement_date, (s.settlement_id IS NOT NULL) AS settled "
            "FROM settlement_lines l LEFT JOIN merchant_settlements s "
            "ON s.merchant_id = l.merchant_id AND s.settlement_date = l.settlement_date "
            "WHERE l.settlement_id IS NULL AND l.settlement_date <= %s "
            "ORDER BY l.merchant_id, l.settlement_date",
            (through,),
        )
        return [(r["merchant_id"], r["settlement_date"], r["settled"]) for r in await cur.fetchall()]
