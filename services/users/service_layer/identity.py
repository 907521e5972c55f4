"""Registration, login and sessions: each use case one PostgreSQL transaction, every state
change audited in it. Sessions live in Cassandra (adapters/sessions.py); a use case that
changes one does so inside its PostgreSQL transaction, under the user's row lock where
the user's state matters, so a Cassandra failure rolls the audit back and the caller gets
UNAVAILABLE. Passwords and refresh tokens exist here only in memory: the databases get an
argon2 hash and SHA-256 hashes, logs and errors get neither."""

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
from services.users.adapters.sessions import Rotation, SessionStore, StoredSession
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


@dataclass(frozen=True)
class SessionLifetime:
    """A session lives `idle` after its last refresh, and never longer than `max_age`
    after its login (INTERPAY_SESSION_IDLE_SECONDS, INTERPAY_SESSION_MAX_AGE_SECONDS)."""

    idle: timedelta = timedelta(days=30)
    max_age: timedelta = timedelta(days=90)


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
        sessions: SessionStore,
        throttle: LoginThrottle | None = None,
        hasher: PasswordHasher | None = None,
        lifetime: SessionLifetime | None = None,
    ):
        self.uow = uow
        self.tokens = tokens
        self.sessions = sessions
        self.lifetime = lifetime or SessionLifetime()
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
            # Written while the user's lock is held: a deletion or erasure waiting on it
            # finds (and ends) this session. If Cassandra fails, the audit rolls back.
            session = SessionRecord(
                session_id=session_id,
                user_id=user_id,
                ip_address=caller.source_ip,
                user_agent=caller.user_agent,
                created_at=now,
                last_refresh_at=None,
                expires_at=min(now + self.lifetime.idle, now + self.lifetime.max_age),
                revoked_at=None,
            )
            await self.sessions.open(session, token_hash(refresh_token), now + self.lifetime.max_age)
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
        before the refusal is returned. Two concurrent refreshes with one token: the
        rotation is a compare-and-set (a lightweight transaction), so exactly one wins and
        the others are reuse."""
        presented = token_hash(refresh_token)
        now = datetime.now(UTC)
        found = await self.sessions.session_of_token(presented)
        if found is None:
            raise InvalidRefreshToken()
        user_id, session_id = found
        issued: str | None = None
        suspended = False
        async with self.uow.transaction() as repo:
            # A shared lock on the user: a deletion, erasure or revoke-all (exclusive on
            # the user) waits for this refresh or comes first, never in the middle;
            # refreshes do not wait for one another (the compare-and-set decides).
            user = await repo.get(user_id, lock_shared=True)
            stored = await self.sessions.get(user_id, session_id)
            if stored is None:
                pass  # expired (TTL) or erased
            elif stored.current_token_hash != presented:
                await self._revoke_reused(repo, stored, caller, now)
            elif stored.record.state(now) is not SessionState.ACTIVE:
                pass
            elif user is not None and user.state == UserState.SUSPENDED:
                suspended = True
            elif user is not None and user.state == UserState.ACTIVE:
                new_token = secrets.token_urlsafe(32)
                created = stored.record.created_at
                expires_at = min(now + self.lifetime.idle, created + self.lifetime.max_age)
                rotation = await self.sessions.rotate(
                    stored, presented, token_hash(new_token), expires_at, now, created + self.lifetime.max_age
                )
                if rotation is Rotation.ROTATED:
                    await audit.record(
                        repo.conn,
                        caller.as_user(user_id),
                        "session.refreshed",
                        "session",
                        session_id,
                        subject_id=user_id,
                        after={"expires_at": expires_at.isoformat()},
                    )
                    issued = new_token
                elif rotation is Rotation.REUSED:  # a concurrent refresh rotated it first
                    await self._revoke_reused(repo, stored, caller, now)
        if suspended:
            raise UserSuspended(user_id)
        if issued is None:
            raise InvalidRefreshToken()
        return Session(
            user_id, self.tokens.issue(user_id, session_id=session_id), self.tokens.ttl_seconds, issued
        )

    async def _revoke_reused(
        self, repo: UserRepository, stored: StoredSession, caller: Caller, now: datetime
    ) -> None:
        session = stored.record
        if not await self.sessions.revoke(stored, "TOKEN_REUSE", now):
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
        found = await self.sessions.session_of_token(token_hash(refresh_token))
        if found is None:
            raise InvalidRefreshToken()
        user_id, session_id = found
        now = datetime.now(UTC)
        async with self.uow.transaction() as repo:
            stored = await self.sessions.get(user_id, session_id)
            if stored is not None and await self.sessions.revoke(stored, "LOGOUT", now):
                await audit.record(
                    repo.conn,
                    caller.as_user(user_id),
                    "session.revoked",
                    "session",
                    session_id,
                    subject_id=user_id,
                    before={"state": SessionState.ACTIVE.value},
                    after={"state": SessionState.REVOKED.value},
                    details={"reason": "LOGOUT"},
                )

    async def revoke_all_sessions(self, user_id: uuid.UUID, caller: Caller) -> int:
        async with self.uow.transaction() as repo:
            if await repo.get(user_id, lock=True) is None:
                raise UserNotFound(user_id)
            revoked = await self.sessions.revoke_all(user_id, "REVOKE_ALL", datetime.now(UTC))
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
