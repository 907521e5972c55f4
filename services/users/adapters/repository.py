"""SQL for users, profiles and refresh sessions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, errors

from services.users.domain.model import IdentifierTaken, User

_USER_SELECT = (
    "SELECT u.user_id, u.email, u.phone, u.state, u.kyc_level, u.created_at, u.updated_at, "
    "p.display_name, p.country_code, p.preferred_language, p.version AS profile_version "
    "FROM users u JOIN user_profiles p USING (user_id) "
)


def _user(row: dict[str, Any]) -> User:
    return User(
        user_id=row["user_id"],
        email=row["email"],
        phone=row["phone"],
        state=row["state"],
        kyc_level=row["kyc_level"],
        display_name=row["display_name"],
        country_code=row["country_code"],
        preferred_language=row["preferred_language"],
        profile_version=row["profile_version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class UserRepository:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    async def add(
        self,
        user_id: uuid.UUID,
        email: str,
        phone: str,
        password_hash: str,
        display_name: str,
        country_code: str,
    ) -> None:
        try:
            async with self.conn.transaction():  # a savepoint, so the error leaves no trace
                await self.conn.execute(
                    "INSERT INTO users (user_id, email, phone, password_hash) VALUES (%s, %s, %s, %s)",
                    (user_id, email, phone, password_hash),
                )
        except errors.UniqueViolation as exc:
            constraint = exc.diag.constraint_name or ""
            raise IdentifierTaken("email" if "email" in constraint else "phone") from exc
        await self.conn.execute(
            "INSERT INTO user_profiles (user_id, display_name, country_code) VALUES (%s, %s, %s)",
            (user_id, display_name, country_code),
        )

    async def get(self, user_id: uuid.UUID) -> User | None:
        cur = await self.conn.execute(_USER_SELECT + "WHERE u.user_id = %s", (user_id,))
        row = await cur.fetchone()
        return _user(row) if row else None

    async def credentials_by_email(self, email: str) -> tuple[uuid.UUID, str, str] | None:
        cur = await self.conn.execute(
            "SELECT user_id, password_hash, state FROM users WHERE lower(email) = lower(%s)", (email,)
        )
        row = await cur.fetchone()
        return (row["user_id"], row["password_hash"], row["state"]) if row else None

    async def add_session(
        self, session_id: uuid.UUID, user_id: uuid.UUID, token_hash: bytes, expires_at: datetime
    ) -> None:
        await self.conn.execute(
            "INSERT INTO refresh_sessions (session_id, user_id, token_hash, expires_at) "
            "VALUES (%s, %s, %s, %s)",
            (session_id, user_id, token_hash, expires_at),
        )
