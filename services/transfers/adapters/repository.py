"""SQL for transfers, payouts and the outcome references that make recording idempotent.

Every statement that creates a transfer or payout, or changes its state, bumps its
`version` and writes that version's event to the outbox in the same transaction
(adapters/events.py): an event exists if and only if its change committed."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from services.transfers.adapters.events import OUTBOX, payout_event, transfer_event
from services.transfers.domain.model import Payout, PayoutRequest, Transfer, TransferRequest

_TRANSFER_COLUMNS = (
    "transfer_id, source_wallet_id, destination_wallet_id, amount, currency, description, "
    "state, failure_code, failure_reason, failure_message, failure_metadata, ledger_transaction_id, "
    "created_at, updated_at, client_context, version"
)
_PAYOUT_COLUMNS = (
    "payout_id, source_wallet_id, destination, amount, currency, state, failure_code, "
    "failure_reason, failure_message, failure_metadata, rail_reference, ledger_transaction_id, "
    "created_at, updated_at, client_context, version"
)


def _client(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _transfer(row: dict[str, Any]) -> Transfer:
    return Transfer(**{**row, "client_context": _client(row["client_context"])})


def _payout(row: dict[str, Any]) -> Payout:
    return Payout(
        **{**row, "destination": bytes(row["destination"]), "client_context": _client(row["client_context"])}
    )


def _page(before: tuple[str, str] | None, limit: int, **extra: Any) -> dict[str, Any]:
    return {
        "bt": before[0] if before else None,
        "bi": before[1] if before else None,
        "limit": limit,
        **extra,
    }


class TransferRepository:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    # -- transfers ------------------------------------------------------------------------
    async def insert_or_get(self, request: TransferRequest) -> Transfer:
        """The transfer with the request's id: created now (with its TransferCreated event),
        or as it already was (no event)."""
        cur = await self.conn.execute(
            f"INSERT INTO transfers (transfer_id, source_wallet_id, destination_wallet_id, amount, "
            f"currency, description, client_context) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            f"ON CONFLICT (transfer_id) DO NOTHING RETURNING {_TRANSFER_COLUMNS}",
            (
                request.transfer_id,
                request.source_wallet_id,
                request.destination_wallet_id,
                request.amount,
                request.currency,
                request.description,
                request.client_context or None,
            ),
        )
        row = await cur.fetchone()
        if row is not None:
            created = _transfer(row)
            await OUTBOX.add(self.conn, [transfer_event(created)])
            return created
        found = await self.get(request.transfer_id)
        assert found is not None
        return found

    async def get(self, transfer_id: uuid.UUID, *, lock: bool = False) -> Transfer | None:
        cur = await self.conn.execute(
            f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE transfer_id = %s"
            + (" FOR UPDATE" if lock else ""),
            (transfer_id,),
        )
        row = await cur.fetchone()
        return _transfer(row) if row else None

    async def settle_transfer(
        self,
        transfer_id: uuid.UUID,
        state: str,
        ledger_transaction_id: uuid.UUID | None,
        failure_code: str | None,
        failure_reason: str | None,
    ) -> Transfer:
        cur = await self.conn.execute(
            f"UPDATE transfers SET state = %s, ledger_transaction_id = %s, failure_code = %s, "
            f"failure_reason = %s, version = version + 1, updated_at = now() "
            f"WHERE transfer_id = %s AND state = 'PENDING' RETURNING {_TRANSFER_COLUMNS}",
            (state, ledger_transaction_id, failure_code, failure_reason, transfer_id),
        )
        row = await cur.fetchone()
        assert row is not None, "the caller holds the transfer's lock and checked it is PENDING"
        settled = _transfer(row)
        await OUTBOX.add(self.conn, [transfer_event(settled)])  # TransferCompleted / TransferFailed
        return settled

    async def describe_transfer_failure(
        self, transfer_id: uuid.UUID, message: str, metadata: dict[str, str]
    ) -> Transfer | None:
        """Keeps the details of a refusal, once (they never change). Not part of the
        contract's Transfer: no new version, no event."""
        cur = await self.conn.execute(
            f"UPDATE transfers SET failure_message = %s, failure_metadata = %s "
            f"WHERE transfer_id = %s AND state = 'FAILED' AND failure_message IS NULL "
            f"RETURNING {_TRANSFER_COLUMNS}",
            (message, Jsonb(metadata), transfer_id),
        )
        row = await cur.fetchone()
        return _transfer(row) if row else None

    async def list_for_wallet(
        self, wallet_ids: list[uuid.UUID] | None, limit: int, before: tuple[str, str] | None
    ) -> list[Transfer]:
        """Newest first; with `wallet_ids`, those from or to one of them."""
        cur = await self.conn.execute(
            f"SELECT {_TRANSFER_COLUMNS} FROM transfers "
            f"WHERE (%(w)s::uuid[] IS NULL OR source_wallet_id = ANY(%(w)s) "
            f"OR destination_wallet_id = ANY(%(w)s)) "
            f"AND (%(bt)s::timestamptz IS NULL OR (created_at, transfer_id) < (%(bt)s, %(bi)s::uuid)) "
            f"ORDER BY created_at DESC, transfer_id DESC LIMIT %(limit)s",
            _page(before, limit, w=wallet_ids),
        )
        return [_transfer(r) for r in await cur.fetchall()]

    # -- payouts --------------------------------------------------------------------------
    async def insert_or_get_payout(self, request: PayoutRequest) -> Payout:
        """As insert_or_get: PayoutCreated only when it is created now."""
        cur = await self.conn.execute(
            f"INSERT INTO payouts (payout_id, source_wallet_id, destination, amount, currency, "
            f"client_context) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (payout_id) DO NOTHING "
            f"RETURNING {_PAYOUT_COLUMNS}",
            (
                request.payout_id,
                request.source_wallet_id,
                request.destination,
                request.amount,
                request.currency,
                request.client_context or None,
            ),
        )
        row = await cur.fetchone()
        if row is not None:
            created = _payout(row)
            await OUTBOX.add(self.conn, [payout_event(created)])
            return created
        found = await self.get_payout(request.payout_id)
        assert found is not None
        return found

    async def get_payout(self, payout_id: uuid.UUID, *, lock: bool = False) -> Payout | None:
        cur = await self.conn.execute(
            f"SELECT {_PAYOUT_COLUMNS} FROM payouts WHERE payout_id = %s" + (" FOR UPDATE" if lock else ""),
            (payout_id,),
        )
        row = await cur.fetchone()
        return _payout(row) if row else None

    async def move_payout(
        self,
        payout_id: uuid.UUID,
        state: str,
        rail_reference: str | None,
        ledger_transaction_id: uuid.UUID | None,
        failure_code: str | None,
        failure_reason: str | None,
    ) -> Payout:
        cur = await self.conn.execute(
            f"UPDATE payouts SET state = %s, rail_reference = coalesce(%s, rail_reference), "
            f"ledger_transaction_id = coalesce(%s, ledger_transaction_id), failure_code = %s, "
            f"failure_reason = %s, version = version + 1, updated_at = now() WHERE payout_id = %s "
            f"RETURNING {_PAYOUT_COLUMNS}",
            (state, rail_reference, ledger_transaction_id, failure_code, failure_reason, payout_id),
        )
        row = await cur.fetchone()
        assert row is not None
        moved = _payout(row)
        await OUTBOX.add(self.conn, [payout_event(moved)])  # PayoutProcessing / Completed / Failed
        return moved

    async def describe_payout_failure(
        self, payout_id: uuid.UUID, message: str, metadata: dict[str, str]
    ) -> Payout | None:
        cur = await self.conn.execute(
            f"UPDATE payouts SET failure_message = %s, failure_metadata = %s "
            f"WHERE payout_id = %s AND state = 'FAILED' AND failure_message IS NULL "
            f"RETURNING {_PAYOUT_COLUMNS}",
            (message, Jsonb(metadata), payout_id),
        )
        row = await cur.fetchone()
        return _payout(row) if row else None

    async def list_payouts(
        self, wallet_ids: list[uuid.UUID] | None, limit: int, before: tuple[str, str] | None
    ) -> list[Payout]:
        """Newest first; with `wallet_ids`, those from one of them."""
        cur = await self.conn.execute(
            f"SELECT {_PAYOUT_COLUMNS} FROM payouts "
            f"WHERE (%(w)s::uuid[] IS NULL OR source_wallet_id = ANY(%(w)s)) "
            f"AND (%(bt)s::timestamptz IS NULL OR (created_at, payout_id) < (%(bt)s, %(bi)s::uuid)) "
            f"ORDER BY created_at DESC, payout_id DESC LIMIT %(limit)s",
            _page(before, limit, w=wallet_ids),
        )
        return [_payout(r) for r in await cur.fetchall()]

    # -- resuming -------------------------------------------------------------------------
    async def stale_transfers(self, older_than_seconds: float, limit: int) -> list[Transfer]:
        cur = await self.conn.execute(
            f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE state = 'PENDING' "
            f"AND updated_at < now() - %s * interval '1 second' ORDER BY updated_at LIMIT %s",
            (older_than_seconds, limit),
        )
        return [_transfer(r) for r in await cur.fetchall()]

    async def stale_payouts(self, older_than_seconds: float, limit: int) -> list[Payout]:
        cur = await self.conn.execute(
            f"SELECT {_PAYOUT_COLUMNS} FROM payouts WHERE state = 'PENDING' "
            f"AND updated_at < now() - %s * interval '1 second' ORDER BY updated_at LIMIT %s",
            (older_than_seconds, limit),
        )
        return [_payout(r) for r in await cur.fetchall()]

    # -- outcome references ---------------------------------------------------------------
    async def recorded_outcome(self, reference: str) -> tuple[uuid.UUID, bytes] | None:
        cur = await self.conn.execute(
            "SELECT subject_id, request_hash FROM outcome_references WHERE reference = %s", (reference,)
        )
        row = await cur.fetchone()
        return (row["subject_id"], bytes(row["request_hash"])) if row else None

    async def record_outcome(self, reference: str, subject_id: uuid.UUID, request_hash: bytes) -> bool:
        """False if the reference was taken meanwhile (by a call about another subject)."""
        cur = await self.conn.execute(
            "INSERT INTO outcome_references (reference, subject_id, request_hash) VALUES (%s, %s, %s) "
            "ON CONFLICT (reference) DO NOTHING RETURNING reference",
            (reference, subject_id, request_hash),
        )
        return await cur.fetchone() is not None
