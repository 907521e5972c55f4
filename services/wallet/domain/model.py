"""The wallet domain: wallets, the rules for moving money between them, and its refusals.

Pure: no database, no gRPC. The refusals are the framework's error types so the
entrypoint can map them to statuses without a translation table.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from services.framework.errors import FailedPrecondition, NotFound

WALLET_DOMAIN_NAMESPACE = uuid.UUID("6f1d3c52-8a0e-4f39-9d0b-3f6a1c2b7e10")


class OwnerType(enum.StrEnum):
    USER = "USER"
    MERCHANT = "MERCHANT"
    SYSTEM = "SYSTEM"


class WalletState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    FROZEN = "FROZEN"
    CLOSED = "CLOSED"


class SystemAccount(enum.StrEnum):
    FUNDING = "FUNDING"
    PAYOUT_CLEARING = "PAYOUT_CLEARING"
    FEES = "FEES"


class TransactionKind(enum.StrEnum):
    FUNDING = "FUNDING"
    TRANSFER = "TRANSFER"
    CAPTURE = "CAPTURE"
    REFUND = "REFUND"
    PAYOUT = "PAYOUT"
    FEE = "FEE"


def system_wallet_id(account: SystemAccount, currency: str) -> uuid.UUID:
    """System wallets have a fixed id per account and currency, so every replica agrees."""
    return uuid.uuid5(WALLET_DOMAIN_NAMESPACE, f"system/{account.value}/{currency}")


@dataclass(frozen=True)
class Wallet:
    wallet_id: uuid.UUID
    owner_type: OwnerType
    owner_id: str
    currency: str
    balance: int
    available: int
    pending: int
    state: WalletState
    version: int
    created_at: datetime
    updated_at: datetime

    @property
    def is_system(self) -> bool:
        return self.owner_type is OwnerType.SYSTEM


@dataclass(frozen=True)
class TransferOrder:
    """What a caller asked to move; a ledger transaction is idempotent on `reference`."""

    source_wallet_id: uuid.UUID
    destination_wallet_id: uuid.UUID
    amount: int
    currency: str
    reference: str
    kind: TransactionKind
    description: str = ""


class WalletNotFound(NotFound):
    default_reason = "WALLET_NOT_FOUND"

    def __init__(self, wallet_id: uuid.UUID | str) -> None:
        super().__init__(f"wallet {wallet_id} does not exist", metadata={"wallet_id": str(wallet_id)})


class InsufficientFunds(FailedPrecondition):
    default_reason = "INSUFFICIENT_FUNDS"


class CurrencyMismatch(FailedPrecondition):
    default_reason = "CURRENCY_MISMATCH"


class WalletNotActive(FailedPrecondition):
    default_reason = "WALLET_NOT_ACTIVE"


class ReferenceReused(FailedPrecondition):
    default_reason = "IDEMPOTENCY_MISMATCH"


def require_currency(wallet: Wallet, currency: str) -> None:
    if wallet.currency != currency:
        raise CurrencyMismatch(
            f"wallet {wallet.wallet_id} holds {wallet.currency}, not {currency}",
            metadata={
                "wallet_id": str(wallet.wallet_id),
                "wallet_currency": wallet.currency,
                "requested_currency": currency,
            },
        )


def require_can_send(wallet: Wallet, amount: int, action: str = "send money") -> None:
    """An ACTIVE wallet with the funds available (a system account may go negative)."""
    if wallet.state is not WalletState.ACTIVE:
        raise WalletNotActive(
            f"wallet {wallet.wallet_id} is {wallet.state.value} and cannot {action}",
            metadata={"wallet_id": str(wallet.wallet_id), "state": wallet.state.value},
        )
    if not wallet.is_system and wallet.available < amount:
        raise InsufficientFunds(
            f"wallet {wallet.wallet_id} has {wallet.available} {wallet.currency} available, {amount} needed",
            metadata={
                "wallet_id": str(wallet.wallet_id),
                "available_minor": str(wallet.available),
                "requested_minor": str(amount),
                "currency": wallet.currency,
            },
        )


def check_transfer(order: TransferOrder, source: Wallet, destination: Wallet) -> None:
    """The rules every movement obeys; raises the first refusal that applies."""
    require_currency(source, order.currency)
    require_currency(destination, order.currency)
    require_can_send(source, order.amount)
    if destination.state is WalletState.CLOSED:
        raise WalletNotActive(
            f"wallet {destination.wallet_id} is CLOSED and cannot receive money",
            metadata={"wallet_id": str(destination.wallet_id), "state": "CLOSED"},
        )


def reference_mismatches(order: TransferOrder, recorded: TransferOrder) -> list[str]:
    """The request fields that differ from the transfer first recorded under a reference."""
    fields = ("source_wallet_id", "destination_wallet_id", "amount", "currency", "kind")
    return [f for f in fields if getattr(order, f) != getattr(recorded, f)]


class HoldState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    CAPTURED = "CAPTURED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class Hold:
    hold_id: uuid.UUID
    wallet_id: uuid.UUID
    amount: int
    captured_amount: int
    reference: str
    state: HoldState
    expires_at: datetime
    created_at: datetime
    currency: str


class HoldNotFound(NotFound):
    default_reason = "HOLD_NOT_FOUND"

    def __init__(self, hold_id: uuid.UUID) -> None:
        super().__init__(f"hold {hold_id} does not exist", metadata={"hold_id": str(hold_id)})


class HoldNotActive(FailedPrecondition):
    default_reason = "HOLD_NOT_ACTIVE"

    def __init__(self, hold: Hold, action: str) -> None:
        super().__init__(
            f"hold {hold.hold_id} is {hold.state.value} and cannot be {action}",
            metadata={"hold_id": str(hold.hold_id), "state": hold.state.value},
        )


class CaptureExceedsHold(FailedPrecondition):
    default_reason = "CAPTURE_EXCEEDS_HOLD"


class WalletNotEmpty(FailedPrecondition):
    default_reason = "WALLET_NOT_EMPTY"


class SystemWalletImmutable(FailedPrecondition):
    default_reason = "SYSTEM_WALLET"


def check_place_hold(wallet: Wallet, amount: int, currency: str) -> None:
    """A hold is a promise to send: only an ACTIVE, non-system wallet with the funds."""
    require_currency(wallet, currency)
    if wallet.is_system:
        raise SystemWalletImmutable(
            "holds cannot be placed on system wallets", metadata={"wallet_id": str(wallet.wallet_id)}
        )
    require_can_send(wallet, amount, "place holds")


def check_capture(
    hold: Hold, amount: int, currency: str, source: Wallet, destination: Wallet, now: datetime
) -> None:
    """Capturing sends money: the hold must be live, the amount within it, and the wallets
    able to take part (a FROZEN payer cannot pay; a CLOSED payee cannot be paid)."""
    if hold.state is not HoldState.ACTIVE:
        raise HoldNotActive(hold, "captured")
    if hold.expires_at <= now:
        raise HoldNotActive(replace(hold, state=HoldState.EXPIRED), "captured")
    if amount > hold.amount:
        raise CaptureExceedsHold(
            f"capture of {amount} exceeds the {hold.amount} {hold.currency} held",
            metadata={
                "hold_id": str(hold.hold_id),
                "held_minor": str(hold.amount),
                "requested_minor": str(amount),
            },
        )
    order = TransferOrder(
        source.wallet_id, destination.wallet_id, amount, currency, hold.reference, TransactionKind.CAPTURE
    )
    check_transfer(order, replace(source, available=source.available + hold.amount), destination)


def check_state_change(wallet: Wallet, target: WalletState) -> None:
    if wallet.is_system:
        raise SystemWalletImmutable(
            "system wallets cannot be frozen or closed", metadata={"wallet_id": str(wallet.wallet_id)}
        )
    if wallet.state is WalletState.CLOSED and target is not WalletState.CLOSED:
        raise WalletNotActive(
            f"wallet {wallet.wallet_id} is CLOSED for good",
            metadata={"wallet_id": str(wallet.wallet_id), "state": "CLOSED"},
        )
    if target is WalletState.CLOSED and (wallet.balance != 0 or wallet.pending != 0):
        raise WalletNotEmpty(
            f"wallet {wallet.wallet_id} still has a balance of {wallet.balance} and "
            f"{wallet.pending} on hold; empty it first",
            metadata={
                "wallet_id": str(wallet.wallet_id),
                "balance_minor": str(wallet.balance),
                "pending_minor": str(wallet.pending),
            },
        )
