"""The transfers domain: transfers and payouts, each idempotent on the id its client chose,
and the rules by which the orchestrator's saga moves them to their outcome."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from interpay.common.v1 import errors_pb2

from services.framework.errors import FailedPrecondition, NotFound, ServiceError


@dataclass(frozen=True)
class TransferRequest:
    transfer_id: uuid.UUID
    source_wallet_id: uuid.UUID
    destination_wallet_id: uuid.UUID
    amount: int
    currency: str
    description: str
    # The user's ClientContext (deterministic encoding), b"" for an operator or a service:
    # kept as first given, never compared on a retry.
    client_context: bytes = b""


@dataclass(frozen=True)
class Transfer:
    transfer_id: uuid.UUID
    source_wallet_id: uuid.UUID
    destination_wallet_id: uuid.UUID
    amount: int
    currency: str
    description: str
    state: str
    failure_code: str | None
    failure_reason: str | None
    failure_message: str | None
    failure_metadata: dict[str, str] | None
    ledger_transaction_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    client_context: bytes | None = None
    # 1 when created, one more with each change of state: its events' aggregate_version.
    version: int = 1

    @property
    def saga_reference(self) -> str:
        """The orchestrator is idempotent on this: a retried create call finds the same saga."""
        return f"transfer:{self.transfer_id}"

    def mismatches(self, request: TransferRequest) -> list[str]:
        fields = ("source_wallet_id", "destination_wallet_id", "amount", "currency", "description")
        return [f for f in fields if getattr(self, f) != getattr(request, f)]


@dataclass(frozen=True)
class PayoutRequest:
    payout_id: uuid.UUID
    source_wallet_id: uuid.UUID
    destination: bytes  # ExternalAccount, deterministic encoding
    amount: int
    currency: str
    client_context: bytes = b""  # as TransferRequest's


@dataclass(frozen=True)
class Payout:
    payout_id: uuid.UUID
    source_wallet_id: uuid.UUID
    destination: bytes
    amount: int
    currency: str
    state: str
    failure_code: str | None
    failure_reason: str | None
    failure_message: str | None
    failure_metadata: dict[str, str] | None
    rail_reference: str | None
    ledger_transaction_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    client_context: bytes | None = None
    version: int = 1  # as Transfer's

    @property
    def saga_reference(self) -> str:
        return f"payout:{self.payout_id}"

    def mismatches(self, request: PayoutRequest) -> list[str]:
        fields = ("source_wallet_id", "destination", "amount", "currency")
        return [f for f in fields if getattr(self, f) != getattr(request, f)]


# A payout moves only forward: PENDING → PROCESSING → COMPLETED, or to FAILED before it
# completes.
_PAYOUT_RANK = {"PENDING": 0, "PROCESSING": 1, "COMPLETED": 2, "FAILED": 2}


def check_transfer_outcome(transfer: Transfer, to_state: str) -> bool:
    """True if the outcome is new; False if the transfer already has it. Raises if the
    transfer already has another outcome."""
    if transfer.state == to_state:
        return False
    if transfer.state != "PENDING":
        raise InvalidOutcome("transfer", transfer.transfer_id, transfer.state, to_state)
    return True


def check_payout_outcome(payout: Payout, to_state: str) -> bool:
    """True if the move is forward; False if the payout is already there."""
    if payout.state == to_state:
        return False
    if _PAYOUT_RANK[to_state] <= _PAYOUT_RANK[payout.state]:
        raise InvalidOutcome("payout", payout.payout_id, payout.state, to_state)
    return True


def masked(value: str, keep_start: int = 0, keep_end: int = 4) -> str:
    """`value` with every character but the first `keep_start` and the last `keep_end`
    replaced by "*", its length kept; wholly masked if it is too short to keep any."""
    if len(value) <= keep_start + keep_end:
        return "*" * len(value)
    return value[:keep_start] + "*" * (len(value) - keep_start - keep_end) + value[len(value) - keep_end :]


def failure_status(reason: str) -> str:
    """The gRPC status a flow that failed for `reason` is answered with."""
    return "NOT_FOUND" if reason == "WALLET_NOT_FOUND" else "FAILED_PRECONDITION"


def is_error_reason(reason: str) -> bool:
    return f"ERROR_REASON_{reason}" in errors_pb2.ErrorReason.keys()


class TransferNotFound(NotFound):
    default_reason = "TRANSFER_NOT_FOUND"

    def __init__(self, transfer_id: uuid.UUID) -> None:
        super().__init__(f"transfer {transfer_id} does not exist", metadata={"transfer_id": str(transfer_id)})


class WalletNotFound(NotFound):
    """A wallet that does not exist, or that the calling user does not own: both are
    answered the same, so another's wallet is not revealed."""

    default_reason = "WALLET_NOT_FOUND"

    def __init__(self, wallet_id: uuid.UUID | str) -> None:
        super().__init__(f"wallet {wallet_id} does not exist", metadata={"wallet_id": str(wallet_id)})


class PayoutNotFound(NotFound):
    default_reason = "PAYOUT_NOT_FOUND"

    def __init__(self, payout_id: uuid.UUID) -> None:
        super().__init__(f"payout {payout_id} does not exist", metadata={"payout_id": str(payout_id)})


class IdReused(FailedPrecondition):
    default_reason = "IDEMPOTENCY_MISMATCH"

    def __init__(self, kind: str, subject_id: uuid.UUID, mismatched: list[str]) -> None:
        super().__init__(
            f"{kind} {subject_id} already exists with a different {', '.join(mismatched)}",
            metadata={f"{kind}_id": str(subject_id), "mismatched_fields": ",".join(mismatched)},
        )


class ReferenceReused(FailedPrecondition):
    default_reason = "IDEMPOTENCY_MISMATCH"

    def __init__(self, reference: str) -> None:
        super().__init__(
            f"reference {reference!r} already recorded a different outcome",
            metadata={"reference": reference},
        )


class InvalidOutcome(FailedPrecondition):
    default_reason = "INVALID_STATE"

    def __init__(self, kind: str, subject_id: uuid.UUID, state: str, to_state: str) -> None:
        super().__init__(
            f"{kind} {subject_id} is {state} and cannot become {to_state}",
            metadata={f"{kind}_id": str(subject_id), "state": state, "requested_state": to_state},
        )


class FlowFailed(ServiceError):
    """Answers a create call (the first and every retry) with why the transfer or payout
    failed: the peer's reason and details when it is an ErrorReason, otherwise (a payout
    rail's return code) TRANSFER_FAILED with the code in the metadata."""

    def __init__(self, kind: str, subject: Transfer | Payout, subject_id: uuid.UUID) -> None:
        failure = subject.failure_reason or "TRANSFER_FAILED"
        reason = failure if is_error_reason(failure) else "TRANSFER_FAILED"
        metadata: dict[str, Any] = {**(subject.failure_metadata or {}), f"{kind}_id": str(subject_id)}
        if reason != failure:
            metadata["failure_reason"] = failure
        super().__init__(
            f"{kind} {subject_id} failed: {subject.failure_message or failure}",
            reason=reason,
            metadata=metadata,
        )
        self.code = grpc.StatusCode[subject.failure_code or failure_status(failure)]
