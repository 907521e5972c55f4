"""SQL for users, profiles and KYC documents, on one connection inside the caller's
transaction. Lock order everywhere: the user row (with its profile) first, then
documents, so writers queue but never deadlock. (Refresh sessions are in Cassandra:
adapters/sessions.py; the user's row lock orders them too.)"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, errors

from services.users.domain.model import (
    DocumentState,
    DocumentType,
    IdentifierTaken,
    KycDocument,
    PendingDocumentExists,
    User,
    UserState,
)

_USER_SELECT = (
    "SELECT u.user_id, u.email, u.phone, u.state, u.kyc_level, u.version, u.created_at, u.updated_at, "
    "p.display_name, p.country_code, p.preferred_language, p.version AS profile_version "
    "FROM users u JOIN user_profiles p USING (user_id) "
)
_DOCUMENT_COLUMNS = (
    "document_id, user_id, document_type, document_reference, issuing_country, state, "
    "rejection_reason, created_at, reviewed_at"
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
        version=row["version"],
    )


def _document(row: dict[str, Any]) -> KycDocument:
    return KycDocument(
        document_id=row["document_id"],
        user_id=row["user_id"],
        document_type=DocumentType(row["document_type"]),
        document_reference=row["document_reference"],
        issuing_country=row["issuing_country"],
        state=DocumentState(row["state"]),
        rejection_reason=row["rejection_reason"] or "",
        created_at=row["created_at"],
        reviewed_at=row["reviewed_at"],
    )


class UserRepository:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    # -- users and profiles --------------------------------------------------------------
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

    async def get(self, user_id: uuid.UUID, *, lock: bool = False, lock_shared: bool = False) -> User | None:
        # NO KEY UPDATE, not UPDATE: documents referencing the user take KEY SHARE on it,
        # which must not queue behind a profile change. SHARE (a refresh): excludes the
        # writers that end sessions, not other refreshes.
        suffix = " FOR NO KEY UPDATE" if lock else " FOR SHARE" if lock_shared else ""
        cur = await self.conn.execute(_USER_SELECT + "WHERE u.user_id = %s" + suffix, (user_id,))
        row = await cur.fetchone()
        return _user(row) if row else None

    async def credentials_by_email(self, email: str) -> tuple[uuid.UUID, str, str] | None:
        cur = await self.conn.execute(
            "SELECT user_id, password_hash, state FROM users "
            "WHERE lower(email) = lower(%s) AND state <> 'ERASED'",
            (email,),
        )
        row = await cur.fetchone()
        return (row["user_id"], row["password_hash"], row["state"]) if row else None

    async def update_profile(self, user_id: uuid.UUID, changes: dict[str, str]) -> None:
        # Column names come from the domain's fixed list, never from the request.
        assignments = ", ".join(f"{name} = %({name})s" for name in changes)
        await self.conn.execute(
            f"UPDATE user_profiles SET {assignments}, version = version + 1, updated_at = now() "
            f"WHERE user_id = %(user_id)s",
            {**changes, "user_id": user_id},
        )
        await self._touch(user_id)

    async def set_state(self, user_id: uuid.UUID, state: UserState) -> None:
        await self.conn.execute(
            "UPDATE users SET state = %s, version = version + 1, updated_at = now() WHERE user_id = %s",
            (state.value, user_id),
        )

    async def set_kyc_level(self, user_id: uuid.UUID, level: int) -> None:
        await self.conn.execute(
            "UPDATE users SET kyc_level = %s, version = version + 1, updated_at = now() WHERE user_id = %s",
            (level, user_id),
        )

    async def _touch(self, user_id: uuid.UUID) -> None:
        await self.conn.execute(
            "UPDATE users SET version = version + 1, updated_at = now() WHERE user_id = %s", (user_id,)
        )

    async def erase(self, user_id: uuid.UUID) -> None:
        """Empties every personal field and the password hash and the KYC documents' media
        references. The user id and state stay. (The sessions, in Cassandra, are the
        caller's to delete.)"""
        await self.conn.execute(
            "UPDATE users SET email = '', phone = '', password_hash = '', state = 'ERASED', "
            "version = version + 1, updated_at = now() WHERE user_id = %s",
            (user_id,),
        )
        await self.conn.execute(
            "UPDATE user_profiles SET display_name = '', country_code = '', preferred_language = '', "
            "version = version + 1, updated_at = now() WHERE user_id = %s",
            (user_id,),
        )
        await self.conn.execute(
            "UPDATE kyc_documents SET document_reference = '', "
            "rejection_reason = CASE WHEN rejection_reason IS NULL THEN NULL ELSE '' END, "
            "reviewed_by = NULL WHERE user_id = %s",
            (user_id,),
        )

    async def replace_password_hash(self, user_id: uuid.UUID, old_hash: str, new_hash: str) -> bool:
        """Swaps the hash only if it is still the one verified (no race with erasure)."""
        cur = await self.conn.execute(
            "UPDATE users SET password_hash = %s WHERE user_id = %s AND password_hash = %s",
            (new_hash, user_id, old_hash),
        )
        return cur.rowcount == 1

    # -- KYC documents -------------------------------------------------------------------
    async def add_document(
        self,
        document_id: uuid.UUID,
        user_id: uuid.UUID,
        document_type: DocumentType,
        document_reference: str,
        issuing_country: str,
    ) -> KycDocument:
        try:
            async with self.conn.transaction():
                cur = await self.conn.execute(
                    f"INSERT INTO kyc_documents (document_id, user_id, document_type, "
                    f"document_reference, issuing_country) VALUES (%s, %s, %s, %s, %s) "
                    f"RETURNING {_DOCUMENT_COLUMNS}",
                    (document_id, user_id, document_type.value, document_reference, issuing_country),
                )
                row = await cur.fetchone()
        except errors.UniqueViolation as exc:
            raise PendingDocumentExists(user_id, document_type) from exc
        assert row is not None
        return _document(row)

    async def get_document(
        self, user_id: uuid.UUID, document_id: uuid.UUID, *, lock: bool = False
    ) -> KycDocument | None:
        cur = await self.conn.execute(
            f"SELECT {_DOCUMENT_COLUMNS} FROM kyc_documents WHERE document_id = %s AND user_id = %s"
            + (" FOR UPDATE" if lock else ""),
            (document_id, user_id),
        )
        row = await cur.fetchone()
        return _document(row) if row else None

    async def review_document(
        self, document_id: uuid.UUID, state: DocumentState, rejection_reason: str, reviewer: str
    ) -> KycDocument:
        cur = await self.conn.execute(
            f"UPDATE kyc_documents SET state = %s, rejection_reason = %s, reviewed_at = now(), "
            f"reviewed_by = %s WHERE document_id = %s RETURNING {_DOCUMENT_COLUMNS}",
            (state.value, rejection_reason or None, reviewer, document_id),
        )
        row = await cur.fetchone()
        assert row is not None
        return _document(row)

    async def verified_document_types(self, user_id: uuid.UUID) -> set[DocumentType]:
        cur = await self.conn.execute(
            "SELECT DISTINCT document_type FROM kyc_documents WHERE user_id = %s AND state = 'VERIFIED'",
            (user_id,),
        )
        return {DocumentType(r["document_type"]) for r in await cur.fetchall()}

    async def has_pending_document(self, user_id: uuid.UUID) -> bool:
        cur = await self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM kyc_documents WHERE user_id = %s AND state = 'PENDING') AS p",
            (user_id,),
        )
        row = await cur.fetchone()
        return bool(row and row["p"])

    async def list_documents(
        self, user_id: uuid.UUID, limit: int, before: tuple[datetime, uuid.UUID] | None = None
    ) -> list[KycDocument]:
        """Newest first; `before` is the keyset cursor (created_at, document_id) of the
        last document of the previous page."""
        if before is None:
            cur = await self.conn.execute(
                f"SELECT {_DOCUMENT_COLUMNS} FROM kyc_documents WHERE user_id = %s "
                f"ORDER BY created_at DESC, document_id DESC LIMIT %s",
                (user_id, limit),
            )
        else:
            cur = await self.conn.execute(
                f"SELECT {_DOCUMENT_COLUMNS} FROM kyc_documents WHERE user_id = %s "
                f"AND (created_at, document_id) < (%s, %s) "
                f"ORDER BY created_at DESC, document_id DESC LIMIT %s",
                (user_id, before[0], before[1], limit),
            )
        return [_document(r) for r in await cur.fetchall()]
