"""The payment state machine and its refusals.

INITIATED → PENDING → AUTHORIZED → CAPTURED → PARTIALLY_REFUNDED / REFUNDED, with FAILED,
CANCELLED, and REQUIRES_REVIEW for payments the fraud rules send to a person. Only the
transitions below exist; any other is FAILED_PRECONDITION naming the current state.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from services.framework.errors import FailedPrecondition, NotFound


class State(enum.StrEnum):
    INITIATED = "INITIATED"
    PENDING = "PENDING"
    REQUIRES_REVIEW = "REQUIRES_REVIEW"
    AUTHORIZED = "AUTHORIZED"
    CAPTURED = "CAPTURED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.INITIATED: frozenset({State.PENDING, State.FAILED}),
    State.PENDING: frozenset({State.REQUIRES_REVIEW, State.AUTHORIZED, State.FAILED, State.CANCELLED}),
    State.REQUIRES_REVIEW: frozenset({State.PENDING, State.CANCELLED, State.FAILED}),
    State.AUTHORIZED: frozenset({State.CAPTURED, State.CANCELLED, State.FAILED}),
    State.CAPTURED: frozenset({State.PARTIALLY_REFUNDED, State.REFUNDED}),
    State.PARTIALLY_REFUNDED: frozenset({State.PARTIALLY_REFUNDED, State.REFUNDED}),
    State.REFUNDED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELLED: frozenset(),
}


@dataclass(frozen=True)
class Payment:
    payment_id: uuid.UUID
    merchant_id: uuid.UUID
    payer_wallet_id: uuid.UUID | None
    card_token: uuid.UUID | None
    payer_user_id: uuid.UUID | None
    amount: int
    currency: str
    captured_amount: int
    refunded_amount: int
    fee_amount: int
    capture_method: str
    description: str
    merchant_reference: str
    client_context: bytes
    state: State
    failure_code: str
    failure_reason: str
    fraud_assessment: bytes | None
    wallet_hold_id: uuid.UUID | None
    processor_reference: str
    request_hash: str
    version: int
    authorization_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    card_summary: bytes | None = None  # a serialised CardSummary, for a card payment


@dataclass(frozen=True)
class Refund:
    refund_id: uuid.UUID
    payment_id: uuid.UUID
    amount: int
    currency: str
    reason: str
    state: str
    failure_reason: str
    request_hash: str
    created_at: datetime
    updated_at: datetime


class PaymentNotFound(NotFound):
    default_reason = "PAYMENT_NOT_FOUND"

    def __init__(self, payment_id: uuid.UUID) -> None:
        super().__init__(f"payment {payment_id} does not exist", metadata={"payment_id": str(payment_id)})


class RefundNotFound(NotFound):
    default_reason = "REFUND_NOT_FOUND"

    def __init__(self, refund_id: uuid.UUID) -> None:
        super().__init__(f"refund {refund_id} does not exist", metadata={"refund_id": str(refund_id)})


class IllegalTransition(FailedPrecondition):
    default_reason = "INVALID_STATE"

    def __init__(self, payment_id: uuid.UUID, current: State, target: State) -> None:
        super().__init__(
            f"payment {payment_id} is {current.value} and cannot become {target.value}",
            metadata={"payment_id": str(payment_id), "state": current.value, "requested_state": target.value},
        )


class RefundExceedsCaptured(FailedPrecondition):
    default_reason = "REFUND_EXCEEDS_CAPTURED"


def check_transition(payment_id: uuid.UUID, current: State, target: State) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(payment_id, current, target)


def refund_state_after(captured: int, refunded: int) -> State:
    return State.REFUNDED if refunded >= captured else State.PARTIALLY_REFUNDED


def check_refund(payment: Payment, amount: int, pending_and_done: int) -> None:
    """Refunds (pending ones included) never exceed what was captured."""
    if payment.state not in (State.CAPTURED, State.PARTIALLY_REFUNDED):
        raise IllegalTransition(payment.payment_id, payment.state, State.PARTIALLY_REFUNDED)
    remaining = payment.captured_amount - pending_and_done
    if amount > remaining:
        raise RefundExceedsCaptured(
            f"a refund of {amount} exceeds the {remaining} {payment.currency} still refundable",
            metadata={
                "payment_id": str(payment.payment_id),
                "refundable_minor": str(remaining),
                "requested_minor": str(amount),
            },
        )
