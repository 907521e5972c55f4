"""Sagas as data: an ordered list of steps, each with an action and (until the pivot) a
compensation. Pure: the engine in service_layer runs them and persists every move."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message


class SagaState(enum.StrEnum):
    STARTED = "STARTED"
    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (SagaState.COMPLETED, SagaState.COMPENSATED, SagaState.FAILED)


class StepState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"


class BusinessFailure(Exception):
    """A step was refused for a reason retrying cannot change (insufficient funds, a
    decline): the saga compensates. `reason` is an ErrorInfo reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TransientFailure(Exception):
    """A step could not tell whether it happened (a peer unavailable, a deadline): the
    same step runs again later with the same idempotency key."""


@dataclass
class SagaContext:
    saga_id: uuid.UUID
    input: Any  # the saga type's input message
    secret: Message | None  # input fields never persisted in clear (a CVV), absent after a crash
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failure: BusinessFailure | None = None
    # When the saga was created: steps that send a time send this one, so that a repeated
    # step sends the same request as the first attempt.
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def key(self, step: str) -> str:
        """The idempotency key of a step: repeated runs of the step are one effect."""
        return f"{self.saga_id}-{step}"


Action = Callable[[SagaContext], Awaitable[dict[str, Any]]]
Compensation = Callable[[SagaContext], Awaitable[None]]


def _always(ctx: SagaContext) -> bool:
    return True


@dataclass(frozen=True)
class Step:
    name: str
    action: Action
    compensate: Compensation | None = None
    when: Callable[[SagaContext], bool] = _always
    # Past the pivot (money has moved for good) a step only goes forward: a refusal is
    # retried with backoff, never compensated, until the cause is fixed.
    forward_only: bool = False


@dataclass(frozen=True)
class SagaDefinition:
    saga_type: str
    input_type: type[Message]
    steps: tuple[Step, ...]
    # Runs once the compensations are done (for example: record the payment as FAILED);
    # retried like a step until it succeeds.
    on_failure: Callable[[SagaContext], Awaitable[None]] | None = None

    def step_index(self, name: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s.name == name)
