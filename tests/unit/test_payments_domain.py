"""The payment state machine, refund limits and fee arithmetic, as pure logic."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.orchestrator.service_layer.payment_sagas import fee_for
from services.payments.domain.model import (
    IllegalTransition,
    Payment,
    RefundExceedsCaptured,
    State,
    check_refund,
    check_transition,
    refund_state_after,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PAYMENT = Payment(
    uuid.uuid4(),
    uuid.uuid4(),
    uuid.uuid4(),
    None,
    None,
    1000,
    "EUR",
    1000,
    0,
    0,
    "AUTOMATIC",
    "",
    "",
    b"",
    State.CAPTURED,
    "",
    "",
    None,
    None,
    "",
    "h",
    1,
    None,
    NOW,
    NOW,
)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (State.INITIATED, State.PENDING),
        (State.PENDING, State.AUTHORIZED),
        (State.PENDING, State.REQUIRES_REVIEW),
        (State.REQUIRES_REVIEW, State.PENDING),
        (State.AUTHORIZED, State.CAPTURED),
        (State.AUTHORIZED, State.CANCELLED),
        (State.CAPTURED, State.PARTIALLY_REFUNDED),
        (State.PARTIALLY_REFUNDED, State.REFUNDED),
    ],
)
def test_the_lifecycle_moves_forward(current: State, target: State) -> None:
    check_transition(uuid.uuid4(), current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (State.CAPTURED, State.CANCELLED),
        (State.FAILED, State.AUTHORIZED),
        (State.REFUNDED, State.CAPTURED),
        (State.PENDING, State.CAPTURED),
        (State.CANCELLED, State.PENDING),
        (State.INITIATED, State.AUTHORIZED),
    ],
)
def test_an_illegal_transition_names_the_current_state(current: State, target: State) -> None:
    with pytest.raises(IllegalTransition) as err:
        check_transition(uuid.uuid4(), current, target)
    assert err.value.metadata["state"] == current.value
    assert current.value in err.value.message


def test_refunds_never_exceed_the_captured_amount() -> None:
    check_refund(PAYMENT, 400, 600)
    with pytest.raises(RefundExceedsCaptured) as err:
        check_refund(PAYMENT, 401, 600)
    assert err.value.metadata["refundable_minor"] == "400"
    with pytest.raises(IllegalTransition):
        check_refund(replace(PAYMENT, state=State.AUTHORIZED), 1, 0)
    assert refund_state_after(1000, 999) is State.PARTIALLY_REFUNDED
    assert refund_state_after(1000, 1000) is State.REFUNDED


@pytest.mark.parametrize(
    ("amount", "bps", "fee"),
    [(10_000, 290, 290), (1, 290, 0), (50, 100, 1), (149, 100, 1), (150, 100, 2), (999, 0, 0)],
)
def test_fees_are_integer_basis_points_rounded_half_up(amount: int, bps: int, fee: int) -> None:
    assert fee_for(amount, bps) == fee
