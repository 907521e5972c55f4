"""Registration, login and sessions: each use case one database transaction, every state
change audited in it. Passwords and refresh tokens exist here only in memory: the
database gets an argon2 hash and SHA-256 hashes, logs and errors get neither."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.users.adapters import audit
from services.users.adapters.audit import Caller
from services.users.adapters.login_throttle import LoginThrottle
from services.users.adapters.repository import UserRepository
from services.users.adapters.tokens import TokenIssuer
from services.users.domain.model import (
    InvalidCredentials,
    InvalidRefreshToken,
    SessionRecord,
    SessionState,
    TooManyLoginAttempts,
    User,
    UserNotFound,
    UserState,
    UserSuspended,
)
from services.users.service_layer.unit_of_work import UnitOfWork

log = logging.getLogger("interpay.users.identity")

# A session lives this long after its last refresh, and never longer than the maximum.
REFRESH_IDLE_TTL = timedelta(days=30)
SESSION_MAX_AGE = timedelta(days=90)


@dataclass(frozen=True)
class Session:
    user_id: uuid.UUID
    access_token: str
    expires_in_seconds: int
    refresh_token: str


def token_hash(refresh_token: str) -> bytes:
    # The token carries 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(refresh_token.encode()).digest()


class Identity:
    def __init__(
        self,
        uow: UnitOfWork,
        tokens: TokenIssuer,
        throttle: LoginThrottle | None = None,
        hasher: PasswordHasher | None = None,
    ):
        self.uow = uow
        self.tokens = tokens
        self.throttle = throttle
        self.hasher = hasher or PasswordHasher()  # argon2id with the library's current defaults
        # Verified against when the email is unknown, so both paths cost the same time.
        self._decoy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    async def register(
        self, email: str, phone: str, password: str, display_name: str, country_code: str, caller: Caller
    ) -> User:
        password_hash = await asyncio.to_thread(self.hasher.hash, password)
        user_id = uuid.uuid4()
        async with self.uow.changing(user_id) as work:
            await work.repo.add(user_id, email, phone, password_hash, display_name, country_code)
            user = await work.repo.get(user_id)
            assert user is not None
            await audit.record(
                work.conn,
                caller.as_user(user_id),
                "user.registered",
                "user",
                user_id,
                subject_id=user_id,
                after=user.audit_view(),
            )
            work.changed = True
        return user

    async def login(self, email: str, password: str, caller: Caller) -> Session:
        if self.throttle is not None:
            lockout = await self.throttle.lockout(email, caller.source_ip)
            if lockout is not None:
                raise TooManyLoginAttempts(lockout.retry_after_seconds, lockout.scope)
        async with self.uow.transaction() as repo:
            found = await repo.credentials_by_email(email)
        stored_hash = found[1] if found else self._decoy_hash
        verified: bool
        try:
            verified = await asyncio.to_thread(self.hasher.verify, stored_hash, password)
        except (VerificationError, InvalidHashError):
            verified = False
        # DELETED users are treated as unknown (ERASED ones have no email to be found by).
        if not verified or found is None or found[2] in (UserState.DELETED, UserState.ERASED):
            await self._failed(email, caller)
            raise InvalidCredentials()
        user_id, _, state = found
        if state == UserState.SUSPENDED:
            raise UserSuspended(user_id)
        if self.throttle is not None:
            await self.throttle.record_success(email)
        refresh_token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        session_id = uuid.uuid4()
        user_caller = caller.as_user(user_id)
        # A hash made with weaker parameters than today's is upgraded while the password
        # is at hand (the only time it is).
        rehashed = None
        if self.hasher.check_needs_rehash(stored_hash):
            rehashed = await asyncio.to_thread(self.hasher.hash, password)
        async with self.uow.transaction() as repo:
            # Re-checked under the user's lock: a deletion that committed since the check
            # above must not be followed by a new session.
            current = await repo.get(user_id, lock=True)
            if current is None or current.state != UserState.ACTIVE:
                raise InvalidCredentials()
            if rehashed is not None and await repo.replace_password_hash(user_id, stored_hash, rehashed):
                await audit.record(
                    repo.conn,
                    user_caller,
                    "user.password_rehashed",
                    "user",
                    user_id,
                    subject_id=user_id,
                    details={"parameters": rehashed.split("$")[3]},
                )
            session = await repo.add_session(
                session_id,
                user_id,
                token_hash(refresh_token),
                now + REFRESH_IDLE_TTL,
                caller.source_ip,
                caller.user_agent,
            )
            await audit.record(
                repo.conn,
                user_caller,
                "session.opened",
                "session",
                session_id,
                subject_id=user_id,
                after={
                    "ip_address": session.ip_address,
                    "user_agent": session.user_agent,
                    "expires_at": session.expires_at.isoformat(),
                },
            )
        return Session(
            user_id,
            self.tokens.issue(user_id, session_id=session_id),
            self.tokens.ttl_seconds,
            refresh_token,
        )

    async def _failed(self, email: str, caller: Caller) -> None:
        if self.throttle is None:
            return
        lockout = await self.throttle.record_failure(email, caller.source_ip)
        if lockout is not None:
            log.warning(
                "login lockout",
                extra={
                    "scope": lockout.scope,
                    "source_ip": caller.source_ip,
                    "retry_after_seconds": lockout.retry_after_seconds,
                },
            )

    async def refresh(self, refresh_token: str, caller: Caller) -> Session:
        """Rotates the token. A rotated token presented again means two parties hold the
        session's tokens (one of them a thief): the whole session is revoked, committed
        before the refusal is returned."""
        presented = token_hash(refresh_token)
        now = datetime.now(UTC)
        issued: tuple[uuid.UUID, uuid.UUID, str] | None = None
        suspended: uuid.UUID | None = None
        async with self.uow.transaction() as repo:
            found = await repo.session_by_token(presented)
            if found is not None:
                session, rotated_at = found
                reused = rotated_at is not None
                if not reused and session.state(now) is SessionState.ACTIVE:
                    user = await repo.get(session.user_id)
                    if user is not None and user.state == UserState.SUSPENDED:
                        suspended = user.user_id
                    elif user is not None and user.state == UserState.ACTIVE:
                        new_token = secrets.token_urlsafe(32)
                        expires_at = min(now + REFRESH_IDLE_TTL, session.created_at + SESSION_MAX_AGE)
                        # None when a concurrent refresh rotated the token first: reuse too.
                        if await repo.rotate_token(
                            session.session_id, presented, token_hash(new_token), expires_at
                        ):
                            await audit.record(
                                repo.conn,
                                caller.as_user(user.user_id),
                                "session.refreshed",
                                "session",
                                session.session_id,
                                subject_id=user.user_id,
                                after={"expires_at": expires_at.isoformat()},
                            )
                            issued = (user.user_id, session.session_id, new_token)
                        else:
                            reused = True
                if reused:
                    await self._revoke_reused(repo, session, caller)
        if suspended is not None:
            raise UserSuspended(suspended)
        if issued is None:
            raise InvalidRefreshToken()
        user_id, session_id, new_token = issued
        return Session(
            user_id, self.tokens.issue(user_id, session_id=session_id), self.tokens.ttl_seconds, new_token
        )

    @staticmethod
    async def _revoke_reused(repo: UserRepository, session: SessionRecord, caller: Caller) -> None:
        if not await repo.revoke_session(session.session_id, "TOKEN_REUSE"):
            return  # already ended
        log.warning(
            "refresh token reused; session revoked",
            extra={"session_id": str(session.session_id), "source_ip": caller.source_ip},
        )
        await audit.record(
            repo.conn,
            caller,
            "session.revoked",
            "session",
            session.session_id,
            subject_id=session.user_id,
            before={"state": SessionState.ACTIVE.value},
            after={"state": SessionState.REVOKED.value},
            details={"reason": "TOKEN_REUSE"},
        )

    async def logout(self, refresh_token: str, caller: Caller) -> None:
        """Ends the token's session; ending an ended session again succeeds."""
        async with self.uow.transaction() as repo:
            found = await repo.session_by_token(token_hash(refresh_token))
            if found is None:
                raise InvalidRefreshToken()
            session, _ = found
            if await repo.revoke_session(session.session_id, "LOGOUT"):
                await audit.record(
                    repo.conn,
                    caller.as_user(session.user_id),
                    "session.revoked",
                    "session",
                    session.session_id,
                    subject_id=session.user_id,
                    before={"state": session.state(datetime.now(UTC)).value},
                    after={"state": SessionState.REVOKED.value},
                    details={"reason": "LOGOUT"},
                )

    async def revoke_all_sessions(self, user_id: uuid.UUID, caller: Caller) -> int:
        async with self.uow.transaction() as repo:
            if await repo.get(user_id, lock=True) is None:
                raise UserNotFound(user_id)
            revoked = await repo.revoke_user_sessions(user_id, "REVOKE_ALL")
            if revoked:
                await audit.record(
                    repo.conn,
                    caller,
                    "user.sessions_revoked",
                    "user",
                    user_id,
                    subject_id=user_id,
                    details={"reason": "REVOKE_ALL", "session_ids": [str(s) for s in revoked]},
                )
        return len(revoked)

    async def purge_ended_sessions(self, retention: timedelta = timedelta(days=30)) -> int:
        async with self.uow.transaction() as repo:
            return await repo.purge_sessions(datetime.now(UTC) - retention, batch=1000)
