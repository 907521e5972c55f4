"""SQL for transfers."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import AsyncConnection

from services.transfers.domain.model import Transfer, TransferRequest

_COLUMNS = (
    "transfer_id, source_wallet_id, destination_wallet_id, amount, currency, description, "
    "state, failure_code, failure_reason, failure_message, ledger_transaction_id, "
    "created_at, updated_at"
)


def _transfer(row: dict[str, Any]) -> Transfer:
    return Transfer(**row)


class TransferRepository:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    async def insert_or_get(self, request: TransferRequest) -> Transfer:
        await self.conn.execute(
            "INSERT INTO transfers (transfer_id, source_wallet_id, destination_wallet_id, amount, "
            "currency, description) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (transfer_id) DO NOTHING",
            (
                request.transfer_id,
                request.source_wallet_id,
                request.destination_wallet_id,
                request.amount,
                request.currency,
                request.description,
            ),
        )
        found = await self.get(request.transfer_id)
        assert found is not None
        return found

    async def get(self, transfer_id: uuid.UUID) -> Transfer | None:
        cur = await self.conn.execute(
            f"SELECT {_COLUMNS} FROM transfers WHERE transfer_id = %s", (transfer_id,)
        )
        row = await cur.fetchone()
        return _transfer(row) if row else None

    async def complete(self, transfer_id: uuid.UUID, ledger_transaction_id: uuid.UUID) -> Transfer:
        cur = await self.conn.execute(
            f"UPDATE transfers SET state = 'COMPLETED', ledger_transaction_id = %s, "
            f"updated_at = now() WHERE transfer_id = %s RETURNING {_COLUMNS}",
            (ledger_transaction_id, transfer_id),
        )
        return _transfer(await cur.fetchone())  # type: ignore[arg-type]

    async def fail(self, transfer_id: uuid.UUID, code: str, reason: str, message: str) -> Transfer:
        cur = await self.conn.execute(
            f"UPDATE transfers SET state = 'FAILED', failure_code = %s, failure_reason = %s, "
            f"failure_message = %s, updated_at = now() WHERE transfer_id = %s AND state = 'PENDING' "
            f"RETURNING {_COLUMNS}",
            (code, reason, message, transfer_id),
        )
        row = await cur.fetchone()
        if row is None:  # a concurrent attempt settled it first
            found = await self.get(transfer_id)
            assert found is not None
            return found
        return _transfer(row)

    async def list_for_wallet(
        self, wallet_id: uuid.UUID | None, limit: int, before: tuple[str, str] | None
    ) -> list[Transfer]:
        cur = await self.conn.execute(
            f"SELECT {_COLUMNS} FROM transfers "
            f"WHERE (%(w)s::uuid IS NULL OR source_wallet_id = %(w)s OR destination_wallet_id = %(w)s) "
            f"AND (%(bt)s::timestamptz IS NULL OR (created_at, transfer_id) < (%(bt)s, %(bi)s::uuid)) "
            f"ORDER BY created_at DESC, transfer_id DESC LIMIT %(limit)s",
            {
                "w": wallet_id,
                "bt": before[0] if before else None,
                "bi": before[1] if before else None,
                "limit": limit,
            },
        )
        return [_transfer(r) for r in await cur.fetchall()]
