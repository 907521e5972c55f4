"""The TransfersService servicer: proto in -> use case -> proto out."""

from __future__ import annotations

import uuid
from typing import Any

from interpay.common.v1.money_pb2 import Money
from interpay.transfers.v1 import transfers_service_pb2 as pb

from services.framework.proto import timestamp
from services.transfers.domain.model import Transfer, TransferRequest
from services.transfers.service_layer.transfers import Transfers


def transfer_pb(t: Transfer) -> pb.Transfer:
    return pb.Transfer(
        transfer_id=str(t.transfer_id),
        source_wallet_id=str(t.source_wallet_id),
        destination_wallet_id=str(t.destination_wallet_id),
        amount=Money(amount_minor=t.amount, currency=t.currency),
        description=t.description,
        state=pb.Transfer.State.Value(f"STATE_{t.state}"),
        failure_reason=t.failure_reason or "",
        ledger_transaction_id=str(t.ledger_transaction_id or ""),
        create_time=timestamp(t.created_at),
        update_time=timestamp(t.updated_at),
    )


class TransfersServicer:
    def __init__(self, transfers: Transfers) -> None:
        self.transfers = transfers

    async def CreateTransfer(
        self, request: pb.CreateTransferRequest, context: Any
    ) -> pb.CreateTransferResponse:
        transfer = await self.transfers.create(
            TransferRequest(
                transfer_id=uuid.UUID(request.transfer_id),
                source_wallet_id=uuid.UUID(request.source_wallet_id),
                destination_wallet_id=uuid.UUID(request.destination_wallet_id),
                amount=request.amount.amount_minor,
                currency=request.amount.currency,
                description=request.description,
            )
        )
        return pb.CreateTransferResponse(transfer=transfer_pb(transfer))

    async def GetTransfer(self, request: pb.GetTransferRequest, context: Any) -> pb.GetTransferResponse:
        transfer = await self.transfers.get(uuid.UUID(request.transfer_id))
        return pb.GetTransferResponse(transfer=transfer_pb(transfer))

    async def ListTransfers(self, request: pb.ListTransfersRequest, context: Any) -> pb.ListTransfersResponse:
        wallet_id = uuid.UUID(request.wallet_id) if request.wallet_id else None
        rows, token = await self.transfers.list_transfers(wallet_id, request.page_size, request.page_token)
        return pb.ListTransfersResponse(transfers=[transfer_pb(t) for t in rows], next_page_token=token)
