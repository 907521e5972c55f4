"""The fraud domain: rules and their parameters, blacklist entries, thresholds, the
transaction a check looks at, and the recorded check with the rules that fired.

Pure: no database, no Redis, no gRPC. The refusals are the framework's error types so the
entrypoint maps them to statuses without a translation table.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from services.framework.errors import FailedPrecondition, NotFound
from services.framework.idempotency import IdempotencyKey, IdempotencyKeyReused  # noqa: F401 - re-exported

BASIS_POINTS = 10_000  # weights, confidences and scores are all in basis points


class RuleType(enum.StrEnum):
    VELOCITY = "VELOCITY"
    AMOUNT = "AMOUNT"
    LOCATION = "LOCATION"
    IMPOSSIBLE_TRAVEL = "IMPOSSIBLE_TRAVEL"
    DEVICE = "DEVICE"
    BLACKLIST = "BLACKLIST"
    PATTERN = "PATTERN"
    KYC_LIMIT = "KYC_LIMIT"


class RuleState(enum.StrEnum):
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"


class Decision(enum.StrEnum):
    APPROVE = "APPROVE"
    REVIEW = "REVIEW"
    DECLINE = "DECLINE"


class TransactionKind(enum.StrEnum):
    PAYMENT = "PAYMENT"
    TRANSFER = "TRANSFER"
    PAYOUT = "PAYOUT"


class PaymentMethodKind(enum.StrEnum):
    WALLET = "WALLET"
    CARD = "CARD"
    BANK_ACCOUNT = "BANK_ACCOUNT"


class BlacklistType(enum.StrEnum):
    USER = "USER"
    EMAIL_DOMAIN = "EMAIL_DOMAIN"
    DEVICE = "DEVICE"
    IP = "IP"
    IP_RANGE = "IP_RANGE"
    CARD_FINGERPRINT = "CARD_FINGERPRINT"


class BlacklistSource(enum.StrEnum):
    MANUAL = "MANUAL"
    FRAUD_REPORT = "FRAUD_REPORT"


class VelocitySubject(enum.StrEnum):
    USER = "USER"
    CARD_FINGERPRINT = "CARD_FINGERPRINT"
    DEVICE = "DEVICE"
    IP_ADDRESS = "IP_ADDRESS"
    EMAIL = "EMAIL"


@dataclass(frozen=True)
class Money:
    amount_minor: int
    currency: str


# -- rule parameters, one dataclass per rule type -------------------------------------------
@dataclass(frozen=True)
class VelocityParams:
    subject: VelocitySubject
    window_ms: int
    max_count: int  # 0: no count limit
    max_amount: Money | None


@dataclass(frozen=True)
class AmountParams:
    thresholds: tuple[Money, ...]


@dataclass(frozen=True)
class LocationParams:
    country_codes: tuple[str, ...]
    fire_on_profile_country_mismatch: bool = False


@dataclass(frozen=True)
class ImpossibleTravelParams:
    max_speed_kmh: int
    min_distance_km: int
    lookback_ms: int


@dataclass(frozen=True)
class DeviceParams:
    max_users_per_device: int  # 0: no limit on distinct users
    window_ms: int
    fire_on_missing_fingerprint: bool
    fire_on_new_device_for_user: bool = False


@dataclass(frozen=True)
class BlacklistParams:
    entry_types: tuple[BlacklistType, ...]


@dataclass(frozen=True)
class PatternParams:
    lookback_ms: int
    min_history_count: int
    z_score_threshold: float


@dataclass(frozen=True)
class KycLevelLimit:
    kyc_level: int
    max_single: Money
    max_daily: Money | None


@dataclass(frozen=True)
class KycLimitParams:
    limits: tuple[KycLevelLimit, ...]


RuleParams = (
    VelocityParams
    | AmountParams
    | LocationParams
    | ImpossibleTravelParams
    | DeviceParams
    | BlacklistParams
    | PatternParams
    | KycLimitParams
)

PARAMS_OF_TYPE: dict[RuleType, type] = {
    RuleType.VELOCITY: VelocityParams,
    RuleType.AMOUNT: AmountParams,
    RuleType.LOCATION: LocationParams,
    RuleType.IMPOSSIBLE_TRAVEL: ImpossibleTravelParams,
    RuleType.DEVICE: DeviceParams,
    RuleType.BLACKLIST: BlacklistParams,
    RuleType.PATTERN: PatternParams,
    RuleType.KYC_LIMIT: KycLimitParams,
}


@dataclass(frozen=True)
class FraudRule:
    rule_id: uuid.UUID
    name: str
    description: str
    rule_type: RuleType
    weight: int
    state: RuleState
    params: RuleParams
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class RuleChanges:
    """What UpdateFraudRule asked to change; None leaves a field as it is."""

    name: str | None = None
    description: str | None = None
    weight: int | None = None
    params: RuleParams | None = None


@dataclass(frozen=True)
class Thresholds:
    review: int
    decline: int
    degraded_minimum: Decision  # APPROVE or REVIEW
    version: int = 1
    updated_at: datetime | None = None


@dataclass(frozen=True)
class BlacklistEntry:
    entry_id: uuid.UUID
    entry_type: BlacklistType
    value: str
    reason: str
    source: BlacklistSource
    payment_id: uuid.UUID | None
    expires_at: datetime | None
    created_at: datetime
    removed_at: datetime | None = None

    def applies_at(self, now: datetime) -> bool:
        return self.removed_at is None and (self.expires_at is None or self.expires_at > now)


# -- a check -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transaction:
    """What CheckTransaction describes; optional identifiers are None when not sent."""

    reference: str
    kind: TransactionKind
    transaction_id: uuid.UUID
    user_id: uuid.UUID | None
    merchant_id: uuid.UUID | None
    counterparty_user_id: uuid.UUID | None
    amount: Money
    method: PaymentMethodKind
    card_fingerprint: str | None
    device_fingerprint: str | None
    ip_address: str | None
    country_code: str | None
    latitude: float | None
    longitude: float | None
    email: str | None
    kyc_level: int
    occurred_at: datetime

    @property
    def email_domain(self) -> str | None:
        if not self.email or "@" not in self.email:
            return None
        return self.email.rsplit("@", 1)[1].lower()

    @property
    def located(self) -> bool:
        return self.latitude is not None and self.longitude is not None


@dataclass(frozen=True)
class RiskProfile:
    """What the users service says about the paying user (GetUserRiskProfile)."""

    kyc_level: int
    country_code: str
    email_domain: str


@dataclass(frozen=True)
class FiredRule:
    rule_id: uuid.UUID
    rule_type: RuleType
    rule_name: str
    weight: int
    confidence: int
    contribution: int
    reason: str
    degraded: bool


@dataclass(frozen=True)
class FraudCheck:
    check_id: uuid.UUID
    transaction: Transaction
    request_hash: bytes
    risk_score: int
    decision: Decision
    fired_rules: tuple[FiredRule, ...]
    degraded: bool
    review_threshold: int
    decline_threshold: int
    config_version: int
    latency_us: int
    created_at: datetime | None = None
    confirmed_fraud: bool = False
    reported_at: datetime | None = None
    report_reason: str = ""


# -- refusals ------------------------------------------------------------------------------
class RuleNotFound(NotFound):
    default_reason = "RULE_NOT_FOUND"

    def __init__(self, rule_id: uuid.UUID | str) -> None:
        super().__init__(f"fraud rule {rule_id} does not exist", metadata={"rule_id": str(rule_id)})


class CheckNotFound(NotFound):
    default_reason = "FRAUD_CHECK_NOT_FOUND"

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message, metadata=metadata)


class BlacklistEntryNotFound(NotFound):
    default_reason = "BLACKLIST_ENTRY_NOT_FOUND"

    def __init__(self, entry_id: uuid.UUID) -> None:
        super().__init__(f"blacklist entry {entry_id} does not exist", metadata={"entry_id": str(entry_id)})


class ReferenceReused(FailedPrecondition):
    default_reason = "IDEMPOTENCY_MISMATCH"

    def __init__(self, reference: str) -> None:
        super().__init__(
            f"reference {reference!r} was already checked with a different request",
            metadata={"reference": reference},
        )
