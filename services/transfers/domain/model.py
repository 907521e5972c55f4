"""The transfers domain: a transfer, idempotent on the id its client chose."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from services.framework.errors import FailedPrecondition, NotFound


@dataclass(frozen=True)
class TransferRequest:
    transfer_id: uuid.UUID
    source_wallet_id: uuid.UUID
    destination_wallet_id: uuid.UUID
    amount: int
    currency: str
    description: str


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
    ledger_transaction_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime

    @property
    def ledger_reference(self) -> str:
        """The wallet ledger is idempotent on this, so re-driving a transfer is harmless."""
        return f"transfer:{self.transfer_id}"

    def mismatches(self, request: TransferRequest) -> list[str]:
        fields = ("source_wallet_id", "destination_wallet_id", "amount", "currency")
        return [f for f in fields if getattr(self, f) != getattr(request, f)]


class TransferNotFound(NotFound):
    default_reason = "TRANSFER_NOT_FOUND"

    def __init__(self, transfer_id: uuid.UUID) -> None:
        super().__init__(f"transfer {transfer_id} does not exist", metadata={"transfer_id": str(transfer_id)})


class TransferIdReused(FailedPrecondition):
    default_reason = "IDEMPOTENCY_MISMATCH"
