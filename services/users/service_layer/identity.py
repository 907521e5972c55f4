"""Registration and login."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.framework.db import Database
from services.users.adapters.repository import UserRepository
from services.users.adapters.tokens import TokenIssuer
from services.users.domain.model import InvalidCredentials, User, UserNotFound

REFRESH_TTL = timedelta(days=30)


@dataclass(frozen=True)
class Session:
    user_id: uuid.UUID
    access_token: str
    expires_in_seconds: int
    refresh_token: str


class Identity:
    def __init__(self, db: Database, tokens: TokenIssuer, hasher: PasswordHasher | None = None):
        self.db = db
        self.tokens = tokens
        self.hasher = hasher or PasswordHasher()  # argon2id with the library's current defaults
        # Verified against when the email is unknown, so both paths cost the same time.
        self._decoy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    async def register(
        self, email: str, phone: str, password: str, display_name: str, country_code: str
    ) -> User:
        password_hash = await asyncio.to_thread(self.hasher.hash, password)
        user_id = uuid.uuid4()
        async with self.db.transaction() as conn:
            repo = UserRepository(conn)
            await repo.add(user_id, email, phone, password_hash, display_name, country_code)
            user = await repo.get(user_id)
        assert user is not None
        return user

    async def get_user(self, user_id: uuid.UUID) -> User:
        async with self.db.transaction() as conn:
            user = await UserRepository(conn).get(user_id)
        if user is None:
            raise UserNotFound(user_id)
        return user

    async def login(self, email: str, password: str) -> Session:
        async with self.db.transaction() as conn:
            found = await UserRepository(conn).credentials_by_email(email)
        stored_hash = found[1] if found else self._decoy_hash
        try:
            await asyncio.to_thread(self.hasher.verify, stored_hash, password)
        except (VerificationError, InvalidHashError):
            raise InvalidCredentials() from None
        if found is None or found[2] != "ACTIVE":
            raise InvalidCredentials()
        user_id = found[0]
        refresh_token = secrets.token_urlsafe(32)
        async with self.db.transaction() as conn:
            await UserRepository(conn).add_session(
                uuid.uuid4(),
                user_id,
                hashlib.sha256(refresh_token.encode()).digest(),
                datetime.now(UTC) + REFRESH_TTL,
            )
        return Session(user_id, self.tokens.issue(user_id), self.tokens.ttl_seconds, refresh_token)
