"""SQL for payments, their history and refunds."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from services.payments.adapters.events import OUTBOX, payment_event, refund_event
from services.payments.domain.model import Payment, Refund, State

_PAYMENT_COLUMNS = (
    "payment_id, merchant_id, payer_wallet_id, card_token, payer_user_id, amount, currency, "
    "captured_amount, refunded_amount, fee_amount, capture_method, description, merchant_reference, "
    "client_context, state, failure_code, failure_reason, fraud_assessment, wallet_hold_id, "
    "processor_reference, request_hash, version, authorization_expires_at, created_at, updated_at, "
    "card_summary"
)
_REFUND_COLUMNS = (
    "refund_id, payment_id, amount, currency, reason, state, failure_reason, request_hash, "
    "created_at, updated_at"
)


def _payment(row: dict[str, Any]) -> Payment:
    return Payment(
        **{
            **row,
            "state": State(row["state"]),
            "client_context": bytes(row["client_context"]),
            "fraud_assessment": bytes(row["fraud_assessment"]) if row["fraud_assessment"] else None,
            "card_summary": bytes(row["card_summary"]) if row["card_summary"] else None,
        }
    )


class PaymentRepository:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    async def insert(self, p: dict[str, Any]) -> Payment | None:
        """The new payment (written with its PaymentCreated event), or None if its id is
        taken. A row this transaction inserted is its own until the commit: a concurrent
        request with the same id waits on it, so the caller needs no lock to read it."""
        columns = ", ".join(p)
        cur = await self.conn.execute(
            f"INSERT INTO payments ({columns}) VALUES ({', '.join(['%s'] * len(p))}) "
            f"ON CONFLICT (payment_id) DO NOTHING RETURNING {_PAYMENT_COLUMNS}",
            list(p.values()),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        payment = _payment(row)
        await OUTBOX.add(self.conn, [payment_event(payment)])  # PaymentCreated
        return payment

    async def get(self, payment_id: uuid.UUID, *, lock: bool = False) -> Payment | None:
        cur = await self.conn.execute(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE payment_id = %s{' FOR UPDATE' if lock else ''}",
            (payment_id,),
        )
        row = await cur.fetchone()
        return _payment(row) if row else None

    async def get_for_transition(self, payment_id: uuid.UUID, reference: str) -> tuple[Payment | None, bool]:
        """The payment, locked, and whether the transition `reference` is already recorded
        (a step the saga repeated): one round trip for the two questions every recorded
        transition asks first."""
        cur = await self.conn.execute(
            f"SELECT {_PAYMENT_COLUMNS}, EXISTS (SELECT 1 FROM payment_transactions WHERE reference = %s) "
            f"AS already_recorded FROM payments WHERE payment_id = %s FOR UPDATE",
            (reference, payment_id),
        )
        row = await cur.fetchone()
        if row is None:
            return None, False
        recorded = bool(row.pop("already_recorded"))
        return _payment(row), recorded

    async def transition(
        self,
        payment: Payment,
        to_state: State,
        reference: str,
        reason: str,
        failure_code: str = "",
        **fields: Any,
    ) -> Payment:
        """Moves a locked payment to `to_state`, sets the given columns, and records the move
        in its history: one statement for both (the history row is inserted only if the
        payment row was moved)."""
        assignments = "".join(f", {column} = %({column})s" for column in fields)
        cur = await self.conn.execute(
            f"WITH moved AS (UPDATE payments SET state = %(to)s, failure_code = %(code)s, "
            f"version = version + 1, "
            f"failure_reason = CASE WHEN %(code)s <> '' THEN %(reason)s ELSE failure_reason END, "
            f"updated_at = now(){assignments} WHERE payment_id = %(id)s RETURNING {_PAYMENT_COLUMNS}), "
            f"history AS (INSERT INTO payment_transactions (transaction_id, payment_id, from_state, "
            f"to_state, reason, failure_code, reference) SELECT %(transaction_id)s, payment_id, "
            f"%(from)s, %(to)s, %(reason)s, %(code)s, %(reference)s FROM moved) "
            f"SELECT {_PAYMENT_COLUMNS} FROM moved",
            {
                "to": to_state.value,
                "from": payment.state.value,
                "code": failure_code,
                "reason": reason,
                "id": payment.payment_id,
                "transaction_id": uuid.uuid4(),
                "reference": reference,
                **fields,
            },
        )
        row = await cur.fetchone()
        assert row is not None
        after = _payment(row)
        await OUTBOX.add(self.conn, [payment_event(after)])  # the new version's event, same transaction
        return after

    async def history(self, payment_id: uuid.UUID) -> list[dict[str, Any]]:
        cur = await self.conn.execute(
            "SELECT transaction_id, payment_id, from_state, to_state, reason, failure_code, reference, "
            "created_at FROM payment_transactions WHERE payment_id = %s ORDER BY created_at, transaction_id",
            (payment_id,),
        )
        return list(await cur.fetchall())

    async def list_payments(
        self,
        merchant_id: uuid.UUID,
        state: State | None,
        start: datetime | None,
        end: datetime | None,
        limit: int,
        before: tuple[str, str] | None,
    ) -> list[Payment]:
        cur = await self.conn.execute(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE merchant_id = %(m)s "
            f"AND (%(s)s::text IS NULL OR state = %(s)s) "
            f"AND (%(start)s::timestamptz IS NULL OR created_at >= %(start)s) "
            f"AND (%(end)s::timestamptz IS NULL OR created_at < %(end)s) "
            f"AND (%(bt)s::timestamptz IS NULL OR (created_at, payment_id) < (%(bt)s, %(bi)s::uuid)) "
            f"ORDER BY created_at DESC, payment_id DESC LIMIT %(limit)s",
            {
                "m": merchant_id,
                "s": state.value if state else None,
                "start": start,
                "end": end,
                "bt": before[0] if before else None,
                "bi": before[1] if before else None,
                "limit": limit,
            },
        )
        return [_payment(r) for r in await cur.fetchall()]

    async def due(self, state: State, older_than_seconds: float | None, limit: int) -> list[uuid.UUID]:
        """Payments stuck in a state: reviews past their timeout, authorisations past expiry."""
        if older_than_seconds is None:
            cur = await self.conn.execute(
                "SELECT payment_id FROM payments WHERE state = %s AND authorization_expires_at < now() "
                "LIMIT %s",
                (state.value, limit),
            )
        else:
            cur = await self.conn.execute(
                "SELECT payment_id FROM payments WHERE state = %s "
                "AND updated_at < now() - %s * interval '1 second' LIMIT %s",
                (state.value, older_than_seconds, limit),
            )
        return [r["payment_id"] for r in await cur.fetchall()]

    # -- refunds ----------------------------------------------------------------------------
    async def insert_refund(
        self, refund_id: uuid.UUID, payment: Payment, amount: int, reason: str, request_hash: str
    ) -> bool:
        cur = await self.conn.execute(
            "INSERT INTO refunds (refund_id, payment_id, amount, currency, reason, request_hash) "
            f"VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (refund_id) DO NOTHING RETURNING {_REFUND_COLUMNS}",
            (refund_id, payment.payment_id, amount, payment.currency, reason, request_hash),
        )
        row = await cur.fetchone()
        if row is not None:
            await OUTBOX.add(self.conn, [refund_event(Refund(**row))])  # RefundCreated
        return row is not None

    async def refunds_outstanding(self, payment_id: uuid.UUID) -> int:
        cur = await self.conn.execute(
            "SELECT coalesce(sum(amount), 0) AS total FROM refunds WHERE payment_id = %s "
            "AND state IN ('PENDING', 'SUCCEEDED')",
            (payment_id,),
        )
        row = await cur.fetchone()
        return int(row["total"]) if row else 0

    async def get_refund(self, refund_id: uuid.UUID, *, lock: bool = False) -> Refund | None:
        cur = await self.conn.execute(
            f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE refund_id = %s{' FOR UPDATE' if lock else ''}",
            (refund_id,),
        )
        row = await cur.fetchone()
        return Refund(**row) if row else None

    async def list_refunds(self, payment_id: uuid.UUID) -> list[Refund]:
        cur = await self.conn.execute(
            f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE payment_id = %s ORDER BY created_at DESC",
            (payment_id,),
        )
        return [Refund(**r) for r in await cur.fetchall()]

    async def settle_refund(self, refund_id: uuid.UUID, state: str, failure_reason: str) -> Refund:
        cur = await self.conn.execute(
            f"UPDATE refunds SET state = %s, failure_reason = %s, updated_at = now() "
            f"WHERE refund_id = %s RETURNING {_REFUND_COLUMNS}",
            (state, failure_reason, refund_id),
        )
        row = await cur.fetchone()
        assert row is not None
        refund = Refund(**row)
        await OUTBOX.add(self.conn, [refund_event(refund)])  # RefundSucceeded / RefundFailed
        return refund
