"""The identity domain: users, their profiles, sessions and KYC documents, the rules that
change them, and the refusals. Pure: no database, no Redis, no gRPC."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from services.framework.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    build_status,
)


class UserState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    DELETED = "DELETED"
    ERASED = "ERASED"


# The profile fields a user may change, in the order of the contract.
PROFILE_FIELDS = ("display_name", "country_code", "preferred_language")


@dataclass(frozen=True)
class User:
    user_id: uuid.UUID
    email: str
    phone: str
    state: str
    kyc_level: int
    display_name: str
    country_code: str
    preferred_language: str
    profile_version: int
    created_at: datetime
    updated_at: datetime
    # Bumped on every change of the user or their profile; orders cached snapshots.
    version: int = 1

    @property
    def email_domain(self) -> str:
        return self.email.rpartition("@")[2].lower() if "@" in self.email else ""

    def audit_view(self) -> dict[str, Any]:
        """What the audit log records of a user: everything but secrets (there are none
        on this object: the password hash never leaves the repository)."""
        return {
            "email": self.email,
            "phone": self.phone,
            "state": self.state,
            "kyc_level": self.kyc_level,
            "display_name": self.display_name,
            "country_code": self.country_code,
            "preferred_language": self.preferred_language,
            "profile_version": self.profile_version,
        }


# Keys of an audit record's before/after that hold personal data; erasure removes them.
PERSONAL_AUDIT_KEYS = (
    "email",
    "phone",
    "display_name",
    "country_code",
    "preferred_language",
    "document_reference",
    "rejection_reason",
    "ip_address",
    "user_agent",
)


def profile_changes(current: User, values: Mapping[str, str], mask: Sequence[str]) -> dict[str, str]:
    """The profile fields an update changes: those named in the mask, or with an empty
    mask every field given a non-empty value. Fields whose value does not change are left
    out, so an update that changes nothing does not bump the version."""
    names = list(mask) if mask else [name for name in PROFILE_FIELDS if values.get(name)]
    return {name: values[name] for name in names if values[name] != getattr(current, name)}


def check_can_change(user: User) -> None:
    """DELETED and ERASED users are kept only as records: nothing about them changes."""
    if user.state in (UserState.DELETED, UserState.ERASED):
        raise UserNotActive(user)


def check_version(user: User, expected_version: int) -> None:
    if user.profile_version != expected_version:
        raise StaleProfileVersion(user.user_id, expected_version, user.profile_version)


def erased(user: User) -> User:
    """The user as erasure leaves them: the id, state, KYC level and dates stay, every
    personal field is empty."""
    return replace(
        user,
        email="",
        phone="",
        state=UserState.ERASED.value,
        display_name="",
        country_code="",
        preferred_language="",
    )


# -- sessions ----------------------------------------------------------------------------


class SessionState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class SessionRecord:
    session_id: uuid.UUID
    user_id: uuid.UUID
    ip_address: str
    user_agent: str
    created_at: datetime
    last_refresh_at: datetime | None
    expires_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None = None

    def state(self, now: datetime) -> SessionState:
        if self.revoked_at is not None:
            return SessionState.REVOKED
        if self.expires_at <= now:
            return SessionState.EXPIRED
        return SessionState.ACTIVE


# -- KYC ---------------------------------------------------------------------------------


class DocumentType(enum.StrEnum):
    PASSPORT = "PASSPORT"
    NATIONAL_ID = "NATIONAL_ID"
    DRIVING_LICENCE = "DRIVING_LICENCE"
    PROOF_OF_ADDRESS = "PROOF_OF_ADDRESS"


IDENTITY_DOCUMENTS = frozenset(
    {DocumentType.PASSPORT, DocumentType.NATIONAL_ID, DocumentType.DRIVING_LICENCE}
)


class DocumentState(enum.StrEnum):
    PENDING = "PENDING"
    VERIFIED = "VERIFIED"
    REJECTED = "REJECTED"


@dataclass(frozen=True)
class KycDocument:
    document_id: uuid.UUID
    user_id: uuid.UUID
    document_type: DocumentType
    document_reference: str
    issuing_country: str
    state: DocumentState
    rejection_reason: str
    created_at: datetime
    reviewed_at: datetime | None

    def audit_view(self) -> dict[str, Any]:
        return {
            "document_type": self.document_type.value,
            "document_reference": self.document_reference,
            "issuing_country": self.issuing_country,
            "state": self.state.value,
            "rejection_reason": self.rejection_reason,
        }


def kyc_level(verified: Iterable[DocumentType]) -> int:
    """0: nothing verified; 1: an identity document verified; 2: identity and a proof of
    address verified. A proof of address alone proves nobody's identity, so it is 0."""
    kinds = set(verified)
    if not kinds & IDENTITY_DOCUMENTS:
        return 0
    return 2 if DocumentType.PROOF_OF_ADDRESS in kinds else 1


@dataclass(frozen=True)
class Limits:
    """The most a user may move in one currency, in minor units."""

    currency: str
    per_transaction: int
    daily: int
    monthly: int


# Limits by KYC level, in minor units of each supported currency. Level 0 may hold and
# send small amounts only (the EU's e-money simplified due diligence is in this range).
_LIMITS_EUR_MAJOR = {0: (150, 250, 1_000), 1: (2_500, 5_000, 20_000), 2: (25_000, 50_000, 200_000)}
SUPPORTED_CURRENCIES = ("EUR", "USD", "GBP")


def limits_for(level: int) -> list[Limits]:
    per_tx, daily, monthly = _LIMITS_EUR_MAJOR[max(0, min(level, 2))]
    return [Limits(c, per_tx * 100, daily * 100, monthly * 100) for c in SUPPORTED_CURRENCIES]


# -- refusals ----------------------------------------------------------------------------


class UserNotFound(NotFound):
    default_reason = "USER_NOT_FOUND"

    def __init__(self, user_id: uuid.UUID | str) -> None:
        super().__init__(f"user {user_id} does not exist", metadata={"user_id": str(user_id)})


class UserNotActive(FailedPrecondition):
    default_reason = "INVALID_STATE"

    def __init__(self, user: User) -> None:
        super().__init__(
            f"user {user.user_id} is {user.state} and can no longer be changed",
            metadata={"user_id": str(user.user_id), "state": user.state},
        )


class UserSuspended(PermissionDenied):
    default_reason = "INVALID_STATE"

    def __init__(self, user_id: uuid.UUID) -> None:
        super().__init__(
            "the user is suspended and cannot log in",
            reason="INVALID_STATE",
            metadata={"user_id": str(user_id), "state": UserState.SUSPENDED.value},
        )


class StaleProfileVersion(Aborted):
    """The contract's UpdateUserProfile names INVALID_STATE (not VERSION_CONFLICT)."""

    default_reason = "INVALID_STATE"

    def __init__(self, user_id: uuid.UUID, expected: int, current: int) -> None:
        super().__init__(
            f"the profile is at version {current}, not {expected}; re-read the user and retry",
            reason="INVALID_STATE",
            metadata={
                "user_id": str(user_id),
                "expected_version": str(expected),
                "current_version": str(current),
            },
        )


class IdentifierTaken(AlreadyExists):
    def __init__(self, field: str) -> None:
        super().__init__(
            f"a user with this {field} is already registered",
            reason="EMAIL_TAKEN" if field == "email" else "PHONE_TAKEN",
            field_violations=[FieldViolation(field, "already registered")],
        )


class InvalidCredentials(Unauthenticated):
    default_reason = "INVALID_CREDENTIALS"

    def __init__(self, message: str = "the email or password is not correct") -> None:
        # One message for an unknown email and a wrong password: the answer must not
        # tell an attacker which emails are registered.
        super().__init__(message)


class InvalidRefreshToken(InvalidCredentials):
    def __init__(self) -> None:
        # One answer for unknown, expired, revoked and reused tokens.
        super().__init__("the refresh token is not valid; log in again")


class KycDocumentNotFound(NotFound):
    default_reason = "NOT_FOUND"

    def __init__(self, user_id: uuid.UUID, document_id: uuid.UUID) -> None:
        super().__init__(
            f"user {user_id} has no KYC document {document_id}",
            metadata={"user_id": str(user_id), "document_id": str(document_id)},
        )


class PendingDocumentExists(AlreadyExists):
    default_reason = "ALREADY_EXISTS"

    def __init__(self, user_id: uuid.UUID, document_type: DocumentType) -> None:
        super().__init__(
            f"a {document_type.value} document of this user is already waiting for review",
            metadata={"user_id": str(user_id), "document_type": document_type.value},
            field_violations=[FieldViolation("document.document_type", "one is already pending")],
        )


class DocumentAlreadyReviewed(FailedPrecondition):
    default_reason = "INVALID_STATE"

    def __init__(self, document: KycDocument) -> None:
        super().__init__(
            f"KYC document {document.document_id} was already reviewed as {document.state.value}",
            metadata={"document_id": str(document.document_id), "state": document.state.value},
        )


class TooManyLoginAttempts(ServiceError):
    """RESOURCE_EXHAUSTED with a google.rpc.RetryInfo (the framework's error types have no
    RetryInfo yet, so this one adds it itself) and `retry_after_seconds` in the ErrorInfo."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RATE_LIMITED"

    def __init__(self, retry_after_seconds: int, scope: str) -> None:
        self.retry_after_seconds = max(1, retry_after_seconds)
        super().__init__(
            f"too many failed logins; retry in {self.retry_after_seconds} seconds",
            metadata={"retry_after_seconds": str(self.retry_after_seconds), "scope": scope},
        )

    def to_status(self, domain: str) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=domain, metadata=self.metadata)
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=self.retry_after_seconds)
        )
        return build_status(self.code, self.message, [info, retry])
