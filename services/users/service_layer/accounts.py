"""Users and their profiles: reads through the profile cache, optimistic profile
updates, soft deletion, the GDPR export and erasure, and the fraud service's risk view.
Deletion and erasure end or delete the user's sessions (Cassandra) inside their
PostgreSQL transaction, under the user's lock: if Cassandra fails, nothing is committed
and the caller gets UNAVAILABLE (a retry finishes the job)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from services.users.adapters import audit
from services.users.adapters.audit import Caller
from services.users.adapters.profile_cache import ProfileCache
from services.users.adapters.sessions import SessionStore
from services.users.domain.model import (
    PERSONAL_AUDIT_KEYS,
    KycDocument,
    SessionRecord,
    User,
    UserNotActive,
    UserNotFound,
    UserState,
    check_can_change,
    check_version,
    profile_changes,
)
from services.users.service_layer.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class UserDataExport:
    user: User
    documents: list[KycDocument]
    sessions: list[SessionRecord]
    exported_at: datetime


@dataclass(frozen=True)
class RiskProfile:
    user: User
    account_age_days: int


class Accounts:
    def __init__(self, uow: UnitOfWork, sessions: SessionStore, cache: ProfileCache | None = None) -> None:
        self.uow = uow
        self.sessions = sessions
        self.cache = cache

    async def get_user(self, user_id: uuid.UUID) -> User:
        if self.cache is not None and (cached := await self.cache.get(user_id)) is not None:
            return cached
        async with self.uow.transaction() as repo:
            user = await repo.get(user_id)
        if user is None:
            raise UserNotFound(user_id)
        if self.cache is not None:
            await self.cache.fill(user)
        return user

    async def update_profile(
        self,
        user_id: uuid.UUID,
        values: Mapping[str, str],
        mask: Sequence[str],
        expected_version: int,
        caller: Caller,
    ) -> User:
        async with self.uow.changing(user_id) as work:
            user = await work.repo.get(user_id, lock=True)
            if user is None:
                raise UserNotFound(user_id)
            check_can_change(user)
            check_version(user, expected_version)
            changes = profile_changes(user, values, mask)
            if not changes:
                return user
            await work.repo.update_profile(user_id, changes)
            await audit.record(
                work.conn,
                caller,
                "user.profile_updated",
                "user",
                user_id,
                subject_id=user_id,
                before={
                    **{name: getattr(user, name) for name in changes},
                    "profile_version": user.profile_version,
                },
                after={**changes, "profile_version": user.profile_version + 1},
            )
            work.changed = True
            updated = await work.repo.get(user_id)
        assert updated is not None
        return updated

    async def delete_user(self, user_id: uuid.UUID, caller: Caller) -> User:
        async with self.uow.changing(user_id) as work:
            user = await work.repo.get(user_id, lock=True)
            if user is None:
                raise UserNotFound(user_id)
            if user.state == UserState.ERASED:
                raise UserNotActive(user)
            if user.state == UserState.DELETED:
                return user  # already deleted: retry-safe
            await work.repo.set_state(user_id, UserState.DELETED)
            revoked = await self.sessions.revoke_all(user_id, "USER_DELETED", datetime.now(UTC))
            await audit.record(
                work.conn,
                caller,
                "user.deleted",
                "user",
                user_id,
                subject_id=user_id,
                before={"state": user.state},
                after={"state": UserState.DELETED.value},
                details={"revoked_session_ids": [str(s) for s in revoked]},
            )
            work.changed = True
            deleted = await work.repo.get(user_id)
        assert deleted is not None
        return deleted

    async def erase_user(self, user_id: uuid.UUID, reason: str, caller: Caller) -> User:
        """Anonymises the user's personal data everywhere this service holds it (user,
        profile, sessions, KYC media references, the audit log's images of them), keeps
        the user id and state, so financial records elsewhere still resolve. Idempotent."""
        async with self.uow.changing(user_id) as work:
            user = await work.repo.get(user_id, lock=True)
            if user is None:
                raise UserNotFound(user_id)
            if user.state == UserState.ERASED:
                return user
            await work.repo.erase(user_id)
            sessions_deleted = await self.sessions.erase(user_id)
            redacted = await audit.redact_subject(work.conn, user_id, PERSONAL_AUDIT_KEYS)
            await audit.record(
                work.conn,
                caller,
                "user.erased",
                "user",
                user_id,
                subject_id=user_id,
                before={"state": user.state},
                after={"state": UserState.ERASED.value},
                details={
                    "reason": reason,
                    "audit_rows_redacted": redacted,
                    "sessions_deleted": sessions_deleted,
                },
            )
            work.changed = True
            erased = await work.repo.get(user_id)
        assert erased is not None
        return erased

    async def export_user_data(self, user_id: uuid.UUID) -> UserDataExport:
        async with self.uow.snapshot() as repo:  # the user and documents as of one instant
            user = await repo.get(user_id)
            if user is None:
                raise UserNotFound(user_id)
            documents = await repo.list_documents(user_id, limit=10_000)
        # Sessions are in Cassandra; without them the export would be incomplete, so a
        # Cassandra outage makes the export UNAVAILABLE rather than silently partial.
        sessions = await self.sessions.of_user(user_id)
        return UserDataExport(user, documents, sessions, datetime.now(UTC))

    async def risk_profile(self, user_id: uuid.UUID) -> RiskProfile:
        user = await self.get_user(user_id)
        age = max(0, (datetime.now(UTC) - user.created_at).days)
        return RiskProfile(user, age)
