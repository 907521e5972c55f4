"""The wallet domain: wallets, the rules for moving money between them, and its refusals.

Pure: no database, no gRPC. The refusals are the framework's error types so the
entrypoint can map them to statuses without a translation table.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
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


def check_transfer(order: TransferOrder, source: Wallet, destination: Wallet) -> None:
    """The rules every movement obeys; raises the first refusal that applies."""
    for wallet in (source, destination):
        if wallet.currency != order.currency:
            raise CurrencyMismatch(
                f"wallet {wallet.wallet_id} holds {wallet.currency}, not {order.currency}",
                metadata={
                    "wallet_id": str(wallet.wallet_id),
                    "wallet_currency": wallet.currency,
                    "requested_currency": order.currency,
                },
            )
    if source.state is not WalletState.ACTIVE:
        raise WalletNotActive(
            f"wallet {source.wallet_id} is {source.state.value} and cannot send money",
            metadata={"wallet_id": str(source.wallet_id), "state": source.state.value},
        )
    if destination.state is WalletState.CLOSED:
        raise WalletNotActive(
            f"wallet {destination.wallet_id} is CLOSED and cannot receive money",
            metadata={"wallet_id": str(destination.wallet_id), "state": "CLOSED"},
        )
    if not source.is_system and source.available < order.amount:
        raise InsufficientFunds(
            f"wallet {source.wallet_id} has {source.available} {source.currency} available, "
            f"{order.amount} needed",
            metadata={
                "wallet_id": str(source.wallet_id),
                "available_minor": str(source.available),
                "requested_minor": str(order.amount),
                "currency": source.currency,
            },
        )


def reference_mismatches(order: TransferOrder, recorded: TransferOrder) -> list[str]:
    """The request fields that differ from the transfer first recorded under a reference."""
    fields = ("source_wallet_id", "destination_wallet_id", "amount", "currency", "kind")
    return [f for f in fields if getattr(order, f) != getattr(recorded, f)]
