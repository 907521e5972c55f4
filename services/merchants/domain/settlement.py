"""Daily settlements: what a merchant earned on one UTC day and the payout of it.

Pure model: the sums, the carry of a negative day into the next, the payout's id, the
states. The SQL and the calls to the transfers service live in the service layer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from services.framework.errors import FailedPrecondition, NotFound

# payout_id = uuid5(PAYOUT_NAMESPACE, "<merchant id>/<YYYY-MM-DD>"): the same merchant and
# day always name the same payout, which the transfers service creates once.
PAYOUT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://merchants.interpay.dev/settlement-payouts")


def payout_id_for(merchant_id: uuid.UUID, day: date) -> uuid.UUID:
    return uuid.uuid5(PAYOUT_NAMESPACE, f"{merchant_id}/{day.isoformat()}")


class SettlementState(StrEnum):
    PENDING = "PENDING"  # computed; the payout's outcome is not known yet
    PAID_OUT = "PAID_OUT"  # paid out, or nothing to pay out
    FAILED = "FAILED"  # the payout failed; the money stays in the settlement wallet


class LineKind(StrEnum):
    CAPTURE = "CAPTURE"
    REFUND = "REFUND"


@dataclass(frozen=True)
class SettlementLine:
    kind: LineKind
    amount_minor: int
    fee_minor: int


@dataclass(frozen=True)
class Totals:
    """A settlement's sums, all in minor units of the settlement currency.

    net = gross_captured - refunds - fees, as the contract shows it. A negative total is
    not taken from the merchant: it is carried forward (carried_out) and taken from the
    next settlements' nets before anything is paid out, so the payouts never exceed what
    the merchant earned (and what its settlement wallet received)."""

    gross_captured: int
    refunds: int
    fees: int
    carried_in: int  # <= 0: the deficit left by earlier settlements

    @property
    def net(self) -> int:
        return self.gross_captured - self.refunds - self.fees

    @property
    def payout(self) -> int:
        return max(0, self.net + self.carried_in)

    @property
    def carried_out(self) -> int:
        return min(0, self.net + self.carried_in)


def totals(lines: list[SettlementLine], carried_in: int) -> Totals:
    captures = [line for line in lines if line.kind is LineKind.CAPTURE]
    return Totals(
        gross_captured=sum(line.amount_minor for line in captures),
        refunds=sum(line.amount_minor for line in lines if line.kind is LineKind.REFUND),
        fees=sum(line.fee_minor for line in captures),
        carried_in=carried_in,
    )


@dataclass(frozen=True)
class Settlement:
    settlement_id: uuid.UUID
    merchant_id: uuid.UUID
    settlement_date: date
    currency: str
    gross_captured_minor: int
    refunds_minor: int
    fees_minor: int
    net_minor: int
    carried_in_minor: int
    payout_minor: int
    carried_out_minor: int
    state: SettlementState
    payout_id: uuid.UUID | None
    source_wallet_id: uuid.UUID | None
    payout_account: dict[str, Any] | None
    failure_reason: str
    created_at: datetime
    updated_at: datetime


class SettlementNotFound(NotFound):
    default_reason = "SETTLEMENT_NOT_FOUND"

    def __init__(self, merchant_id: uuid.UUID, settlement_id: uuid.UUID) -> None:
        super().__init__(
            f"merchant {merchant_id} has no settlement {settlement_id}",
            metadata={"merchant_id": str(merchant_id), "settlement_id": str(settlement_id)},
        )


class DayNotEnded(FailedPrecondition):
    default_reason = "INVALID_STATE"

    def __init__(self, day: date, today: date) -> None:
        super().__init__(
            f"{day.isoformat()} has not ended yet (today is {today.isoformat()} UTC)",
            metadata={"settlement_date": day.isoformat(), "today": today.isoformat()},
        )


class NoSettlementWallet(FailedPrecondition):
    default_reason = "WALLET_NOT_FOUND"

    def __init__(self, merchant_id: uuid.UUID) -> None:
        super().__init__(
            f"merchant {merchant_id} has no settlement wallet yet",
            metadata={"merchant_id": str(merchant_id)},
        )
