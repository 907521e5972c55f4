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

    async def insert(self, p: dict[str, Any]) -> bool:
        columns = ", ".join(p)
        cur = await self.conn.execute(
            f"INSERT INTO payments ({columns}) VALUES ({', '.join(['%s'] * len(p))}) "
            f"ON CONFLICT (payment_id) DO NOTHING RETURNING {_PAYMENT_COLUMNS}",
            list(p.values()),
        )
        row = await cur.fetchone()
        if row is not None:
            await OUTBOX.add(self.conn, [payment_event(_payment(row))])  # PaymentCreated
        return row is not None

    async def get(self, payment_id: uuid.UUID, *, lock: bool = False) -> Payment | None:
        cur = await self.conn.execute(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE payment_id = %s{' FOR UPDATE' if lock else ''}",
            (payment_id,),
        )
        row = await cur.fetchone()
        return _payment(row) if row else None

    async def transition_recorded(self, reference: str) -> bool:
        cur = await self.conn.execute("SELECT 1 FROM payment_transactions WHERE reference = %s", (reference,))
        return await cur.fetchone() is not None

    async def transition(
        self,
        payment: Payment,
        to_state: State,
        reference: str,
        reason: str,
        failure_code: str = "",
        **fields: Any,
    ) -> Payment:
        """Moves a locked payment to `to_state`, sets the given columns, and records the move."""
        assignments = "".join(f", {column} = %({column})s" for column in fields)
        cur = await self.conn.execute(
            f"UPDATE payments SET state = %(to)s, failure_code = %(code)s, version = version + 1, "
            f"failure_reason = CASE WHEN %(code)s <> '' THEN %(reason)s ELSE failure_reason END, "
            f"updated_at = now(){assignments} WHERE payment_id = %(id)s RETURNING {_PAYMENT_COLUMNS}",
            {
                "to": to_state.value,
                "code": failure_code,
                "reason": reason,
                "id": payment.payment_id,
                **fields,
            },
        )
        row = await cur.fetchone()
        assert row is not None
        await self.conn.execute(
            "INSERT INTO payment_transactions (transaction_id, payment_id, from_state, to_state, reason, "
            "failure_code, reference) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                uuid.uuid4(),
                payment.payment_id,
                payment.state.value,
                to_state.value,
                reason,
                failure_code,
                reference,
            ),
        )
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
