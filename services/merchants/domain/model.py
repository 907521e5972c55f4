"""The merchants domain: merchants and their lifecycle, API keys and their lifecycle,
webhook endpoints, and the refusals of each.

Pure: no database, no gRPC, no Redis. The refusals are the framework's error types, so
the entrypoint maps them to statuses without a translation table.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from services.framework.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    build_status,
)
from services.framework.idempotency import IdempotencyKey, IdempotencyKeyReused  # noqa: F401 - re-exported

# -- merchants --------------------------------------------------------------------------


class MerchantState(enum.StrEnum):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"


# target state -> the states it may be reached from (besides itself, which is a no-op)
_TRANSITIONS: dict[MerchantState, frozenset[MerchantState]] = {
    MerchantState.ACTIVE: frozenset({MerchantState.PENDING, MerchantState.SUSPENDED}),
    MerchantState.SUSPENDED: frozenset({MerchantState.ACTIVE}),
}


@dataclass(frozen=True)
class PayoutAccount:
    """The bank account settlements are paid out to: an IBAN, or a domestic account
    number with its routing code."""

    holder_name: str
    country_code: str
    iban: str = ""
    account_number: str = ""
    routing_number: str = ""


@dataclass(frozen=True)
class OnboardMerchant:
    """The command that onboards a merchant."""

    legal_name: str
    display_name: str
    contact_email: str
    country_code: str
    settlement_currency: str
    payout_account: PayoutAccount
    fee_bps: int


@dataclass(frozen=True)
class Merchant:
    merchant_id: uuid.UUID
    legal_name: str
    display_name: str
    contact_email: str
    country_code: str
    settlement_currency: str
    settlement_wallet_id: uuid.UUID | None  # None only while onboarding is unfinished
    payout_account: PayoutAccount
    fee_bps: int
    state: MerchantState
    suspend_reason: str
    created_at: datetime
    updated_at: datetime


class MerchantNotFound(NotFound):
    default_reason = "MERCHANT_NOT_FOUND"

    def __init__(self, merchant_id: uuid.UUID) -> None:
        super().__init__(f"merchant {merchant_id} does not exist", metadata={"merchant_id": str(merchant_id)})


class IllegalTransition(FailedPrecondition):
    default_reason = "INVALID_STATE"

    def __init__(self, merchant: Merchant, target: MerchantState, why: str) -> None:
        super().__init__(
            f"merchant {merchant.merchant_id} is {merchant.state.value} and cannot become "
            f"{target.value}: {why}",
            metadata={
                "merchant_id": str(merchant.merchant_id),
                "state": merchant.state.value,
                "requested_state": target.value,
            },
        )


def needs_transition(merchant: Merchant, target: MerchantState) -> bool:
    """Whether moving the merchant to `target` changes anything; raises when the move is
    not allowed. Reaching the state it is already in is a retry-safe no-op."""
    if merchant.state is target:
        return False
    allowed = _TRANSITIONS[target]
    if merchant.state not in allowed:
        raise IllegalTransition(
            merchant, target, f"only a merchant that is {' or '.join(sorted(s.value for s in allowed))} can"
        )
    if target is MerchantState.ACTIVE and merchant.settlement_wallet_id is None:
        raise IllegalTransition(merchant, target, "its settlement wallet is not open yet")
    return True


# -- API keys ---------------------------------------------------------------------------


class ApiKeyScope(enum.StrEnum):
    PAYMENTS_READ = "PAYMENTS_READ"
    PAYMENTS_WRITE = "PAYMENTS_WRITE"
    REFUNDS_WRITE = "REFUNDS_WRITE"
    REPORTS_READ = "REPORTS_READ"
    WEBHOOKS_WRITE = "WEBHOOKS_WRITE"


class ApiKeyState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class ApiKey:
    key_id: uuid.UUID
    merchant_id: uuid.UUID
    public_id: str
    scopes: tuple[ApiKeyScope, ...]
    rate_limit_per_minute: int
    expires_at: datetime | None
    revoked_at: datetime | None
    replaced_by_key_id: uuid.UUID | None
    last_used_at: datetime | None
    created_at: datetime

    def state_at(self, now: datetime) -> ApiKeyState:
        """Revocation is recorded; expiry is a moment, so EXPIRED is read off the clock."""
        if self.revoked_at is not None:
            return ApiKeyState.REVOKED
        if self.expires_at is not None and self.expires_at <= now:
            return ApiKeyState.EXPIRED
        return ApiKeyState.ACTIVE


@dataclass(frozen=True)
class RotationPlan:
    """What a rotation does to the old key, and the new key's expiry."""

    revoke_old_now: bool
    old_expires_at: datetime | None
    new_expires_at: datetime | None


class ApiKeyNotFound(NotFound):
    default_reason = "API_KEY_NOT_FOUND"

    def __init__(self, merchant_id: uuid.UUID, key_id: uuid.UUID) -> None:
        super().__init__(
            f"merchant {merchant_id} has no API key {key_id}",
            metadata={"merchant_id": str(merchant_id), "key_id": str(key_id)},
        )


class ApiKeyNotRotatable(FailedPrecondition):
    default_reason = "INVALID_STATE"


def plan_rotation(key: ApiKey, overlap: timedelta, now: datetime) -> RotationPlan:
    """Only an ACTIVE key that has not been rotated already can be rotated. The old key
    works for `overlap` more (never longer than it would have anyway); the new key gets
    the old one's lifetime, counted from now, or none if the old one had none."""
    state = key.state_at(now)
    if state is not ApiKeyState.ACTIVE:
        raise ApiKeyNotRotatable(
            f"API key {key.key_id} is {state.value}; only an ACTIVE key can be rotated",
            metadata={"key_id": str(key.key_id), "state": state.value},
        )
    if key.replaced_by_key_id is not None:
        raise ApiKeyNotRotatable(
            f"API key {key.key_id} was already rotated to {key.replaced_by_key_id}; rotate that one",
            metadata={
                "key_id": str(key.key_id),
                "state": state.value,
                "replaced_by_key_id": str(key.replaced_by_key_id),
            },
        )
    new_expires_at = now + (key.expires_at - key.created_at) if key.expires_at is not None else None
    if overlap <= timedelta(0):
        return RotationPlan(revoke_old_now=True, old_expires_at=key.expires_at, new_expires_at=new_expires_at)
    end = now + overlap
    if key.expires_at is not None:
        end = min(end, key.expires_at)
    return RotationPlan(revoke_old_now=False, old_expires_at=end, new_expires_at=new_expires_at)


# The refusals of AuthenticateApiKey. The contract makes every one of them UNAUTHENTICATED
# with reason INVALID_CREDENTIALS, so a client handles one refusal. A wrong secret and an
# unknown public id are told apart by nothing at all; revoked and expired say so in the
# message and the metadata, but only to a caller who proved it holds the secret, so nobody
# learns anything about a key they cannot use.


class InvalidCredentials(Unauthenticated):
    default_reason = "INVALID_CREDENTIALS"

    def __init__(self) -> None:
        super().__init__("the API key's public id or secret is wrong")


class ApiKeyRevoked(Unauthenticated):
    default_reason = "INVALID_CREDENTIALS"

    def __init__(self, key: ApiKey) -> None:
        super().__init__(
            f"API key {key.public_id} was revoked",
            metadata={"key_id": str(key.key_id), "public_id": key.public_id, "key_state": "REVOKED"},
        )


class ApiKeyExpired(Unauthenticated):
    default_reason = "INVALID_CREDENTIALS"

    def __init__(self, key: ApiKey) -> None:
        assert key.expires_at is not None
        super().__init__(
            f"API key {key.public_id} expired at {key.expires_at.isoformat()}",
            metadata={
                "key_id": str(key.key_id),
                "public_id": key.public_id,
                "key_state": "EXPIRED",
                "expire_time": key.expires_at.isoformat(),
            },
        )


class MerchantNotActiveForKey(PermissionDenied):
    """The contract's refusal of a genuine key whose merchant is PENDING or SUSPENDED."""

    default_reason = "INVALID_STATE"

    def __init__(self, key: ApiKey, state: MerchantState) -> None:
        super().__init__(
            f"merchant {key.merchant_id} is {state.value}; its API keys are refused",
            metadata={"merchant_id": str(key.merchant_id), "key_id": str(key.key_id), "state": state.value},
        )


def check_key_usable(key: ApiKey, merchant_state: MerchantState, now: datetime) -> None:
    """After the secret matched: is the key live, and is its merchant taking calls?"""
    state = key.state_at(now)
    if state is ApiKeyState.REVOKED:
        raise ApiKeyRevoked(key)
    if state is ApiKeyState.EXPIRED:
        raise ApiKeyExpired(key)
    if merchant_state is not MerchantState.ACTIVE:
        raise MerchantNotActiveForKey(key, merchant_state)


class RateLimited(ServiceError):
    """RESOURCE_EXHAUSTED with a google.rpc.RetryInfo telling the caller when to come
    back (the framework's ServiceError packs only ErrorInfo and BadRequest)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RATE_LIMITED"

    def __init__(self, key: ApiKey, retry_after: timedelta) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"API key {key.public_id} exceeded {key.rate_limit_per_minute} calls per minute; "
            f"retry in {retry_after.total_seconds():.3f} s",
            metadata={
                "key_id": str(key.key_id),
                "rate_limit_per_minute": str(key.rate_limit_per_minute),
                "retry_after_ms": str(max(1, round(retry_after.total_seconds() * 1000))),
            },
        )

    def to_status(self, domain: str) -> status_pb2.Status:
        delay = Duration()
        delay.FromTimedelta(self.retry_after)
        return build_status(
            self.code,
            self.message,
            [
                error_details_pb2.ErrorInfo(reason=self.reason, domain=domain, metadata=self.metadata),
                error_details_pb2.RetryInfo(retry_delay=delay),
            ],
        )


# -- webhook endpoints ------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookEndpoint:
    endpoint_id: uuid.UUID
    merchant_id: uuid.UUID
    url: str
    event_types: tuple[str, ...]
    description: str
    created_at: datetime
    deleted_at: datetime | None


class WebhookEndpointNotFound(NotFound):
    default_reason = "WEBHOOK_ENDPOINT_NOT_FOUND"

    def __init__(self, merchant_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
        super().__init__(
            f"merchant {merchant_id} has no webhook endpoint {endpoint_id}",
            metadata={"merchant_id": str(merchant_id), "endpoint_id": str(endpoint_id)},
        )


def check_event_types(event_types: Sequence[str], publishers: Collection[str]) -> None:
    """Each event type must come from a service of the mesh (`interpay.<service>.v1.X`);
    the contract has already checked the name's shape."""
    violations = [
        FieldViolation(f"event_types[{i}]", f"no InterPay service {name.split('.')[1]!r} publishes events")
        for i, name in enumerate(event_types)
        if name.split(".")[1] not in publishers
    ]
    if violations:
        raise InvalidArgument(
            "invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in violations),
            field_violations=violations,
        )


# -- Idempotency-Key --------------------------------------------------------------------
