"""The TransfersService servicer: proto in -> use case -> proto out. A user principal is
restricted to their own wallets (see service_layer/transfers.py) and brings their device
and IP (services/framework/edge_context.py); operators and services see everything."""

from __future__ import annotations

import uuid
from typing import Any

from interpay.common.v1.money_pb2 import Money
from interpay.transfers.v1 import transfers_service_pb2 as pb

from services.framework.edge_auth import Kind, current_principal
from services.framework.edge_context import client_context
from services.framework.proto import timestamp
from services.transfers.domain.model import Payout, PayoutRequest, Transfer, TransferRequest
from services.transfers.service_layer.transfers import Transfers, encode_client, request_hash


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


def payout_pb(p: Payout) -> pb.Payout:
    return pb.Payout(
        payout_id=str(p.payout_id),
        source_wallet_id=str(p.source_wallet_id),
        destination=pb.ExternalAccount.FromString(p.destination),
        amount=Money(amount_minor=p.amount, currency=p.currency),
        state=pb.Payout.State.Value(f"STATE_{p.state}"),
        failure_reason=p.failure_reason or "",
        rail_reference=p.rail_reference or "",
        ledger_transaction_id=str(p.ledger_transaction_id or ""),
        create_time=timestamp(p.created_at),
        update_time=timestamp(p.updated_at),
    )


def _optional_uuid(value: str) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None


def _owner() -> str | None:
    """The user the caller is restricted to, or None for an operator or a service."""
    principal = current_principal()
    return principal.subject if principal is not None and principal.kind is Kind.USER else None


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
                client_context=encode_client(client_context(context)),
            ),
            owner=_owner(),
        )
        return pb.CreateTransferResponse(transfer=transfer_pb(transfer))

    async def GetTransfer(self, request: pb.GetTransferRequest, context: Any) -> pb.GetTransferResponse:
        transfer = await self.transfers.get(uuid.UUID(request.transfer_id), owner=_owner())
        return pb.GetTransferResponse(transfer=transfer_pb(transfer))

    async def ListTransfers(self, request: pb.ListTransfersRequest, context: Any) -> pb.ListTransfersResponse:
        wallet_id = _optional_uuid(request.wallet_id)
        rows, token = await self.transfers.list_transfers(
            wallet_id, request.page_size, request.page_token, owner=_owner()
        )
        return pb.ListTransfersResponse(transfers=[transfer_pb(t) for t in rows], next_page_token=token)

    async def CreatePayout(self, request: pb.CreatePayoutRequest, context: Any) -> pb.CreatePayoutResponse:
        payout = await self.transfers.create_payout(
            PayoutRequest(
                payout_id=uuid.UUID(request.payout_id),
                source_wallet_id=uuid.UUID(request.source_wallet_id),
                destination=request.destination.SerializeToString(deterministic=True),
                amount=request.amount.amount_minor,
                currency=request.amount.currency,
                client_context=encode_client(client_context(context)),
            ),
            owner=_owner(),
        )
        return pb.CreatePayoutResponse(payout=payout_pb(payout))

    async def GetPayout(self, request: pb.GetPayoutRequest, context: Any) -> pb.GetPayoutResponse:
        payout = await self.transfers.get_payout(uuid.UUID(request.payout_id), owner=_owner())
        return pb.GetPayoutResponse(payout=payout_pb(payout))

    async def ListPayouts(self, request: pb.ListPayoutsRequest, context: Any) -> pb.ListPayoutsResponse:
        wallet_id = _optional_uuid(request.wallet_id)
        rows, token = await self.transfers.list_payouts(
            wallet_id, request.page_size, request.page_token, owner=_owner()
        )
        return pb.ListPayoutsResponse(payouts=[payout_pb(p) for p in rows], next_page_token=token)

    async def RecordTransferOutcome(
        self, request: pb.RecordTransferOutcomeRequest, context: Any
    ) -> pb.RecordTransferOutcomeResponse:
        transfer = await self.transfers.record_transfer_outcome(
            uuid.UUID(request.transfer_id),
            pb.Transfer.State.Name(request.state).removeprefix("STATE_"),
            request.reference,
            _optional_uuid(request.ledger_transaction_id),
            request.failure_reason,
            request_hash(request),
        )
        return pb.RecordTransferOutcomeResponse(transfer=transfer_pb(transfer))

    async def RecordPayoutOutcome(
        self, request: pb.RecordPayoutOutcomeRequest, context: Any
    ) -> pb.RecordPayoutOutcomeResponse:
        payout = await self.transfers.record_payout_outcome(
            uuid.UUID(request.payout_id),
            pb.Payout.State.Name(request.state).removeprefix("STATE_"),
            request.reference,
            request.rail_reference,
            _optional_uuid(request.ledger_transaction_id),
            request.failure_reason,
            request_hash(request),
        )
        return pb.RecordPayoutOutcomeResponse(payout=payout_pb(payout))
