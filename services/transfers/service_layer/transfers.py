"""P2P transfers: record the client's transfer, move the money in the wallet ledger, settle.

The transfer row is written before the ledger is called and settled after, and the
ledger is idempotent on the transfer's reference, so a client retrying with the same
transfer_id after any failure (ours, the wallet's, the network's) finishes the same
transfer exactly once. (The payments issue moves this flow into an orchestrator saga.)
"""

from __future__ import annotations

import uuid

import grpc
from grpc_status import rpc_status
from interpay.common.v1.money_pb2 import Money
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.framework import paging
from services.framework.db import Database
from services.framework.errors import ServiceError, error_info
from services.transfers.adapters.repository import TransferRepository
from services.transfers.domain.model import (
    Transfer,
    TransferIdReused,
    TransferNotFound,
    TransferRequest,
)

# The wallet's refusals that settle a transfer as FAILED; anything else (UNAVAILABLE,
# DEADLINE_EXCEEDED) leaves it PENDING for the client's retry to finish.
_FINAL_REFUSALS = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
}


class RecordedFailure(ServiceError):
    """Replays the refusal a transfer failed with the first time."""

    def __init__(self, transfer: Transfer) -> None:
        super().__init__(
            transfer.failure_message or "the transfer failed",
            reason=transfer.failure_reason or "TRANSFER_FAILED",
            metadata={"transfer_id": str(transfer.transfer_id)},
        )
        self.code = grpc.StatusCode[transfer.failure_code or "FAILED_PRECONDITION"]


class Transfers:
    def __init__(self, db: Database, wallet: WalletServiceStub) -> None:
        self.db = db
        self.wallet = wallet

    async def create(self, request: TransferRequest) -> Transfer:
        async with self.db.transaction() as conn:
            transfer = await TransferRepository(conn).insert_or_get(request)
        mismatched = transfer.mismatches(request)
        if mismatched:
            raise TransferIdReused(
                f"transfer {request.transfer_id} already exists with a different {', '.join(mismatched)}",
                metadata={"transfer_id": str(request.transfer_id), "mismatched_fields": ",".join(mismatched)},
            )
        if transfer.state == "COMPLETED":
            return transfer
        if transfer.state == "FAILED":
            raise RecordedFailure(transfer)
        try:
            moved = await self.wallet.TransferFunds(
                wallet_pb.TransferFundsRequest(
                    source_wallet_id=str(transfer.source_wallet_id),
                    destination_wallet_id=str(transfer.destination_wallet_id),
                    amount=Money(amount_minor=transfer.amount, currency=transfer.currency),
                    reference=transfer.ledger_reference,
                    kind=wallet_pb.TRANSACTION_KIND_TRANSFER,
                    description=transfer.description,
                )
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _FINAL_REFUSALS:
                status = rpc_status.from_call(exc)
                info = error_info(status) if status else None
                async with self.db.transaction() as conn:
                    await TransferRepository(conn).fail(
                        transfer.transfer_id,
                        exc.code().name,
                        info.reason if info else exc.code().name,
                        exc.details() or "",
                    )
            raise  # the interceptor passes the wallet's refusal through unchanged
        async with self.db.transaction() as conn:
            return await TransferRepository(conn).complete(
                transfer.transfer_id, uuid.UUID(moved.transaction_id)
            )

    async def get(self, transfer_id: uuid.UUID) -> Transfer:
        async with self.db.transaction() as conn:
            transfer = await TransferRepository(conn).get(transfer_id)
        if transfer is None:
            raise TransferNotFound(transfer_id)
        return transfer

    async def list_transfers(
        self, wallet_id: uuid.UUID | None, page_size: int, page_token: str
    ) -> tuple[list[Transfer], str]:
        cursor = paging.decode(page_token)
        size = paging.page_size(page_size)
        before = (cursor[0], cursor[1]) if cursor and len(cursor) == 2 else None
        async with self.db.transaction() as conn:
            rows = await TransferRepository(conn).list_for_wallet(wallet_id, size + 1, before)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = paging.encode([rows[-1].created_at.isoformat(), str(rows[-1].transfer_id)])
        return rows, token
