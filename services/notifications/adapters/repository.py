"""SQL for notifications, webhook deliveries and their attempts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from interpay.events.v1.envelope_pb2 import EventEnvelope
from psycopg import AsyncConnection

_NOTIFICATION = (
    "notification_id, user_id, channel, template, event_id, event_type, title, body, masked_recipient, "
    "state, attempt_count, failure_reason, created_at, sent_at, updated_at"
)
_DELIVERY = (
    "delivery_id, merchant_id, endpoint_id, endpoint_url, event_id, event_type, body, state, "
    "attempt_count, round_started_at, round_attempts, manual, next_attempt_at, created_at, updated_at"
)
_ATTEMPT = "delivery_id, attempt_number, attempted_at, response_status_code, duration_ms, error, manual"

Row = dict[str, Any]


@dataclass(frozen=True)
class Waiting:
    """Events that name a party learnt from another topic's events, and wait for it."""

    table: str  # (position, event_id, <key>, envelope), in arrival order
    key: str
    lock_space: int  # the first key of the two-key advisory lock on one party (its hash the second)


# Refund events wait for their payment's parties, payout events for their wallet's owner.
REFUND = Waiting("pending_refund_events", "payment_id", 0x4E0F)
PAYOUT = Waiting("pending_payout_events", "wallet_id", 0x4E10)


class NotificationRepository:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    # -- notifications --------------------------------------------------------------------
    async def add_notification(
        self,
        user_id: uuid.UUID,
        channel: str,
        template: str,
        event_id: uuid.UUID,
        event_type: str,
        title: str,
        body: str,
        at: datetime,
    ) -> None:
        """An in-app notification is shown by the app from this row: it is SENT when stored.
        A plain INSERT: processed_events already makes an event's effect happen once, and
        the unique (event, user, channel) turns a failure of that into a loud error."""
        await self.conn.execute(
            "INSERT INTO notifications (notification_id, user_id, channel, template, event_id, "
            "event_type, title, body, state, attempt_count, created_at, sent_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'SENT', 1, %s, %s, %s)",
            (uuid.uuid4(), user_id, channel, template, event_id, event_type, title, body, at, at, at),
        )

    async def set_wallet_owner(self, wallet_id: uuid.UUID, user_id: uuid.UUID | None) -> None:
        """Remembers a wallet's creation: its owner, or None when no user owns it."""
        await self.conn.execute(
            "INSERT INTO wallet_owners (wallet_id, user_id) VALUES (%s, %s) "
            "ON CONFLICT (wallet_id) DO NOTHING",
            (wallet_id, user_id),
        )

    async def wallet_owner(self, wallet_id: uuid.UUID) -> uuid.UUID | None:
        """The user who owns the wallet; None if no user does or its creation is unknown."""
        known, owner = await self.known_wallet(wallet_id)
        return owner if known else None

    async def known_wallet(self, wallet_id: uuid.UUID) -> tuple[bool, uuid.UUID | None]:
        """(whether the wallet's creation has been consumed, its user owner if any)."""
        cur = await self.conn.execute("SELECT user_id FROM wallet_owners WHERE wallet_id = %s", (wallet_id,))
        row = await cur.fetchone()
        return (True, row["user_id"]) if row else (False, None)

    # -- events waiting for a party (refunds for their payment, payouts for their wallet) ---
    async def lock_party(self, waiting: Waiting, key: uuid.UUID) -> None:
        """Serialises, until the transaction ends, everything done about one party: learning
        it, and an event that names it finding it or waiting for it."""
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(%s::int4, hashtext(%s))", (waiting.lock_space, str(key))
        )

    async def hold_event(
        self, waiting: Waiting, event_id: uuid.UUID, key: uuid.UUID, envelope: bytes
    ) -> None:
        await self.conn.execute(
            f"INSERT INTO {waiting.table} (event_id, {waiting.key}, envelope) VALUES (%s, %s, %s)",
            (event_id, key, envelope),
        )

    async def release_events(self, waiting: Waiting, key: uuid.UUID) -> list[EventEnvelope]:
        """The events that waited for this party, in arrival order, no longer waiting."""
        cur = await self.conn.execute(
            f"DELETE FROM {waiting.table} WHERE {waiting.key} = %s RETURNING position, envelope", (key,)
        )
        rows = sorted(await cur.fetchall(), key=lambda r: r["position"])
        return [EventEnvelope.FromString(bytes(r["envelope"])) for r in rows]

    # -- payments' parties, for refund events ----------------------------------------------
    async def learn_payment(
        self, payment_id: uuid.UUID, merchant_id: uuid.UUID, payer_user_id: uuid.UUID | None, label: str
    ) -> bool:
        """True if the payment was not known before."""
        cur = await self.conn.execute(
            "INSERT INTO payment_parties (payment_id, merchant_id, payer_user_id, label) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (payment_id) DO NOTHING RETURNING payment_id",
            (payment_id, merchant_id, payer_user_id, label),
        )
        return await cur.fetchone() is not None

    async def payment_parties(self, payment_id: uuid.UUID) -> Row | None:
        cur = await self.conn.execute(
            "SELECT payment_id, merchant_id, payer_user_id, label FROM payment_parties WHERE payment_id = %s",
            (payment_id,),
        )
        return await cur.fetchone()

    async def get_notification(self, notification_id: uuid.UUID) -> Row | None:
        cur = await self.conn.execute(
            f"SELECT {_NOTIFICATION} FROM notifications WHERE notification_id = %s", (notification_id,)
        )
        return await cur.fetchone()

    async def list_notifications(
        self,
        user_id: uuid.UUID,
        channel: str | None,
        state: str | None,
        limit: int,
        before: tuple[str, str] | None,
    ) -> list[Row]:
        cur = await self.conn.execute(
            f"SELECT {_NOTIFICATION} FROM notifications WHERE user_id = %(u)s "
            "AND (%(c)s::text IS NULL OR channel = %(c)s) AND (%(s)s::text IS NULL OR state = %(s)s) "
            "AND (%(bt)s::timestamptz IS NULL OR (created_at, notification_id) < (%(bt)s, %(bi)s::uuid)) "
            "ORDER BY created_at DESC, notification_id DESC LIMIT %(limit)s",
            {
                "u": user_id,
                "c": channel,
                "s": state,
                "bt": before[0] if before else None,
                "bi": before[1] if before else None,
                "limit": limit,
            },
        )
        return list(await cur.fetchall())

    # -- webhook deliveries ---------------------------------------------------------------
    async def add_delivery(
        self,
        merchant_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        endpoint_url: str,
        event_id: uuid.UUID,
        event_type: str,
        body: bytes,
        at: datetime,
    ) -> None:
        await self.conn.execute(
            "INSERT INTO webhook_deliveries (delivery_id, merchant_id, endpoint_id, endpoint_url, event_id, "
            "event_type, body, state, round_started_at, next_attempt_at, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, 'PENDING', %s, %s, %s, %s)",
            (
                uuid.uuid4(),
                merchant_id,
                endpoint_id,
                endpoint_url,
                event_id,
                event_type,
                body,
                at,
                at,
                at,
                at,
            ),
        )

    async def get_delivery(self, delivery_id: uuid.UUID, *, lock: bool = False) -> Row | None:
        cur = await self.conn.execute(
            f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE delivery_id = %s"
            f"{' FOR UPDATE' if lock else ''}",
            (delivery_id,),
        )
        return await cur.fetchone()

    async def attempts(self, delivery_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Row]]:
        cur = await self.conn.execute(
            f"SELECT {_ATTEMPT} FROM webhook_attempts WHERE delivery_id = ANY(%s) "
            "ORDER BY delivery_id, attempt_number",
            (delivery_ids,),
        )
        out: dict[uuid.UUID, list[Row]] = {d: [] for d in delivery_ids}
        for row in await cur.fetchall():
            out[row["delivery_id"]].append(row)
        return out

    async def list_deliveries(
        self,
        merchant_id: uuid.UUID,
        state: str | None,
        event_type: str | None,
        limit: int,
        before: tuple[str, str] | None,
    ) -> list[Row]:
        cur = await self.conn.execute(
            f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE merchant_id = %(m)s "
            "AND (%(s)s::text IS NULL OR state = %(s)s) AND (%(e)s::text IS NULL OR event_type = %(e)s) "
            "AND (%(bt)s::timestamptz IS NULL OR (created_at, delivery_id) < (%(bt)s, %(bi)s::uuid)) "
            "ORDER BY created_at DESC, delivery_id DESC LIMIT %(limit)s",
            {
                "m": merchant_id,
                "s": state,
                "e": event_type,
                "bt": before[0] if before else None,
                "bi": before[1] if before else None,
                "limit": limit,
            },
        )
        return list(await cur.fetchall())

    async def claim_due(self, limit: int, lease_seconds: float) -> list[Row]:
        """Due deliveries, leased: their next_attempt_at moves past the attempt's end, so
        another sender (or this one after a crash) takes them only if the lease runs out."""
        cur = await self.conn.execute(
            "UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => %s) "
            "WHERE delivery_id IN (SELECT delivery_id FROM webhook_deliveries "
            "WHERE state IN ('PENDING', 'RETRYING') AND next_attempt_at <= now() "
            "ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_DELIVERY}",
            (lease_seconds, limit),
        )
        return list(await cur.fetchall())

    async def record_attempt(
        self,
        delivery: Row,
        attempted_at: datetime,
        status: int,
        duration_ms: int,
        error: str,
        endpoint_url: str,
        state: str,
        next_attempt_at: datetime | None,
    ) -> None:
        number = delivery["attempt_count"] + 1
        await self.conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, attempt_number, attempted_at, response_status_code, "
            "duration_ms, error, manual) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (delivery["delivery_id"], number, attempted_at, status, duration_ms, error, delivery["manual"]),
        )
        await self.conn.execute(
            "UPDATE webhook_deliveries SET attempt_count = %s, round_attempts = round_attempts + 1, "
            "manual = false, state = %s, next_attempt_at = %s, endpoint_url = %s, updated_at = now() "
            "WHERE delivery_id = %s",
            (number, state, next_attempt_at, endpoint_url, delivery["delivery_id"]),
        )

    async def redeliver(self, delivery_id: uuid.UUID) -> None:
        await self.conn.execute(
            "UPDATE webhook_deliveries SET state = 'PENDING', manual = true, round_started_at = now(), "
            "round_attempts = 0, next_attempt_at = now(), updated_at = now() WHERE delivery_id = %s",
            (delivery_id,),
        )
