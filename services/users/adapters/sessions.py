"""Refresh sessions in Cassandra (infra/cassandra/schema/0002_user_sessions.cql): a row
per session in the user's partition, and a lookup row per refresh token hash.

Every write to a session row is a lightweight transaction, so the decisions that must be
exact are Paxos's, not a read's: of two rotations presenting one token exactly one
applies, a revocation never lands on a row that a rotation changed under it, and an
erasure is ordered after whatever wrote the row before it. Reads (LOCAL_QUORUM) only
route: they find the session and its current values, which the conditions then check.

Rows carry a TTL up to the session's expiry and every write rewrites every column with
it, so a session row disappears when the session expires; `expires_at` is checked as
well (TTLs have whole-second granularity). Only SHA-256 hashes of tokens are stored.
Cassandra being unreachable raises `CassandraUnavailable` (UNAVAILABLE) from any method.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.framework.cassandra import Cassandra, ttl_seconds
from services.users.domain.model import SessionRecord

_COLUMNS = (
    "user_id, session_id, created_at, last_refresh_at, expires_at, ip_address, user_agent, "
    "current_token_hash, revoked, revoked_at, revoked_reason"
)
STATEMENTS = {
    "ADD_TOKEN": (
        "INSERT INTO user_refresh_tokens (token_hash, user_id, session_id, issued_at) "
        "VALUES (?, ?, ?, ?) USING TTL ?"
    ),
    "TOKEN": "SELECT user_id, session_id FROM user_refresh_tokens WHERE token_hash = ?",
    "OPEN": (
        "INSERT INTO user_refresh_sessions (user_id, session_id, created_at, expires_at, ip_address, "
        "user_agent, current_token_hash, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, false) "
        "IF NOT EXISTS USING TTL ?"
    ),
    "GET": f"SELECT {_COLUMNS} FROM user_refresh_sessions WHERE user_id = ? AND session_id = ?",  # noqa: S608
    "LIST": f"SELECT {_COLUMNS} FROM user_refresh_sessions WHERE user_id = ?",  # noqa: S608 (constants)
    # The presented token must still be current, the session open and unexpired. Every
    # column is written again, so the whole row takes the new TTL.
    "ROTATE": (
        "UPDATE user_refresh_sessions USING TTL ? SET current_token_hash = ?, last_refresh_at = ?, "
        "expires_at = ?, created_at = ?, ip_address = ?, user_agent = ?, revoked = false "
        "WHERE user_id = ? AND session_id = ? "
        "IF current_token_hash = ? AND revoked = false AND expires_at > ?"
    ),
    # `expires_at = ?` (as read): the revocation's TTL is right for the row it lands on.
    "REVOKE": (
        "UPDATE user_refresh_sessions USING TTL ? SET revoked = true, revoked_at = ?, revoked_reason = ? "
        "WHERE user_id = ? AND session_id = ? IF revoked = false AND expires_at = ?"
    ),
    "DELETE": "DELETE FROM user_refresh_sessions WHERE user_id = ? AND session_id = ? IF EXISTS",
    "DELETE_ALL": "DELETE FROM user_refresh_sessions WHERE user_id = ?",
}

# A revocation retried against a session a refresh keeps extending; more than a few
# rounds means something is wrong, and the caller gets an error rather than a loop.
_REVOKE_ATTEMPTS = 5


class Rotation(enum.Enum):
    ROTATED = "ROTATED"  # the presented token was current: the successor is current now
    REUSED = "REUSED"  # another rotation of the same session won: the token is spent
    ENDED = "ENDED"  # the session was revoked, expired or erased meanwhile


@dataclass(frozen=True)
class StoredSession:
    record: SessionRecord
    current_token_hash: bytes
    revoked: bool


def _utc(value: datetime | None) -> datetime | None:
    # The driver reads timestamps as naive UTC datetimes.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _stored(row: dict[str, Any]) -> StoredSession | None:
    created_at, expires_at = _utc(row["created_at"]), _utc(row["expires_at"])
    if created_at is None or expires_at is None:
        return None  # nothing but a key left (cannot happen while every write sets every column)
    record = SessionRecord(
        session_id=row["session_id"],
        user_id=row["user_id"],
        ip_address=row["ip_address"] or "",
        user_agent=row["user_agent"] or "",
        created_at=created_at,
        last_refresh_at=_utc(row["last_refresh_at"]),
        expires_at=expires_at,
        revoked_at=_utc(row["revoked_at"]),
        revoked_reason=row["revoked_reason"],
    )
    return StoredSession(record, bytes(row["current_token_hash"] or b""), bool(row["revoked"]))


class SessionStore:
    def __init__(self, cassandra: Cassandra) -> None:
        self.cassandra = cassandra

    async def open(self, session: SessionRecord, token_hash: bytes, tokens_live_until: datetime) -> None:
        """Stores a new session whose current token has this hash; the token's lookup row
        lives until `tokens_live_until` (the session's latest possible end)."""
        now = session.created_at
        await self.cassandra.execute(
            "ADD_TOKEN",
            (
                token_hash,
                session.user_id,
                session.session_id,
                now,
                ttl_seconds((tokens_live_until - now).total_seconds()),
            ),
        )
        opened = await self.cassandra.execute_conditional(
            "OPEN",
            (
                session.user_id,
                session.session_id,
                session.created_at,
                session.expires_at,
                session.ip_address,
                session.user_agent,
                token_hash,
                ttl_seconds((session.expires_at - now).total_seconds()),
            ),
        )
        if not opened.applied:  # a random uuid4 taken twice: never, but never silently either
            raise RuntimeError(f"session {session.session_id} already exists")

    async def session_of_token(self, token_hash: bytes) -> tuple[uuid.UUID, uuid.UUID] | None:
        """(user id, session id) of the session a token was issued for, if still known."""
        rows = await self.cassandra.execute("TOKEN", (token_hash,))
        return (rows[0]["user_id"], rows[0]["session_id"]) if rows else None

    async def get(self, user_id: uuid.UUID, session_id: uuid.UUID) -> StoredSession | None:
        rows = await self.cassandra.execute("GET", (user_id, session_id))
        return _stored(rows[0]) if rows else None

    async def of_user(self, user_id: uuid.UUID) -> list[SessionRecord]:
        """The user's sessions still stored (open, or revoked and not yet expired), newest
        first."""
        found = [s for row in await self.cassandra.execute("LIST", (user_id,)) if (s := _stored(row))]
        records = [s.record for s in found]
        return sorted(records, key=lambda r: (r.created_at, r.session_id.bytes), reverse=True)

    async def rotate(
        self,
        stored: StoredSession,
        presented: bytes,
        successor: bytes,
        expires_at: datetime,
        now: datetime,
        tokens_live_until: datetime,
    ) -> Rotation:
        """Makes `successor` the session's current token if `presented` still is (and the
        session is open and unexpired), extending the session to `expires_at`. The
        successor's lookup row is written first, so a success leaves both rows; after a
        failure it is an orphan nobody holds the token of, and expires."""
        s = stored.record
        await self.cassandra.execute(
            "ADD_TOKEN",
            (successor, s.user_id, s.session_id, now, ttl_seconds((tokens_live_until - now).total_seconds())),
        )
        outcome = await self.cassandra.execute_conditional(
            "ROTATE",
            (
                ttl_seconds((expires_at - now).total_seconds()),
                successor,
                now,
                expires_at,
                s.created_at,
                s.ip_address,
                s.user_agent,
                s.user_id,
                s.session_id,
                presented,
                now,
            ),
        )
        if outcome.applied:
            return Rotation.ROTATED
        current = outcome.current
        if not current or current.get("revoked") or (_utc(current.get("expires_at")) or now) <= now:
            return Rotation.ENDED
        return (
            Rotation.REUSED
            if bytes(current.get("current_token_hash") or b"") != presented
            else Rotation.ENDED
        )

    async def revoke(self, stored: StoredSession, reason: str, now: datetime) -> bool:
        """Revokes the session if it is open; False if it had already ended (revoked,
        expired or gone), so a caller audits each revocation once."""
        expires_at: datetime | None = stored.record.expires_at
        revoked = stored.revoked
        for _ in range(_REVOKE_ATTEMPTS):
            if revoked or expires_at is None or expires_at <= now:
                return False
            outcome = await self.cassandra.execute_conditional(
                "REVOKE",
                (
                    ttl_seconds((expires_at - now).total_seconds()),
                    now,
                    reason,
                    stored.record.user_id,
                    stored.record.session_id,
                    expires_at,
                ),
            )
            if outcome.applied:
                return True
            # Revoked, gone, or refreshed (a new expiry) since it was read: look again.
            revoked = bool(outcome.current.get("revoked", True))
            expires_at = _utc(outcome.current.get("expires_at"))
        raise RuntimeError(f"session {stored.record.session_id} kept changing while being revoked")

    async def revoke_all(self, user_id: uuid.UUID, reason: str, now: datetime) -> list[uuid.UUID]:
        """Revokes every open session of the user; returns the ids of those it revoked.
        (The caller holds the user's lock, so no login adds one meanwhile.)"""
        found = [s for row in await self.cassandra.execute("LIST", (user_id,)) if (s := _stored(row))]
        revoked = []
        for stored in found:  # one at a time: a user has a handful of sessions
            if await self.revoke(stored, reason, now):
                revoked.append(stored.record.session_id)
        return revoked

    async def erase(self, user_id: uuid.UUID) -> int:
        """Deletes every session row of the user (their IP addresses and user agents) and
        returns how many there were. Each row is deleted with a lightweight transaction,
        ordered after every earlier write to it; the partition deletion after that is a
        catch-all. Token lookup rows hold no personal data (hashes and ids) and expire."""
        rows = await self.cassandra.execute("LIST", (user_id,))
        await self.cassandra.execute_concurrently([("DELETE", (user_id, row["session_id"])) for row in rows])
        await self.cassandra.execute("DELETE_ALL", (user_id,))
        return len(rows)
