"""The transfers service, as settlements use it: a payout of a settlement's net from the
merchant's settlement wallet to its payout account, idempotent on the payout id, and its
outcome."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import grpc
from grpc_status import rpc_status
from interpay.common.v1.money_pb2 import Money
from interpay.transfers.v1 import transfers_service_pb2 as transfers_pb
from interpay.transfers.v1.transfers_service_pb2_grpc import TransfersServiceStub

from services.framework.errors import error_info

log = logging.getLogger("interpay.merchants.payouts")
Payout = transfers_pb.Payout
# Refusals of CreatePayout that end the payout (transfers answers a FAILED payout with the
# refusal that failed it); every other failure leaves the outcome unknown, to ask again.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


@dataclass(frozen=True)
class PayoutRequest:
    payout_id: uuid.UUID
    source_wallet_id: uuid.UUID
    destination: transfers_pb.ExternalAccount
    amount_minor: int
    currency: str


@dataclass(frozen=True)
class PayoutOutcome:
    """COMPLETED or FAILED (with the reason); None while the payout is under way or its
    outcome could not be learnt."""

    completed: bool
    failure_reason: str = ""


class Payouts:
    def __init__(self, transfers: TransfersServiceStub) -> None:
        self.transfers = transfers

    async def pay(self, request: PayoutRequest) -> PayoutOutcome | None:
        """Finds the payout or creates it (CreatePayout is idempotent on payout_id, so a
        repeat after any failure reaches the same payout) and says how it ended, if it
        has."""
        try:
            found = await self.transfers.GetPayout(
                transfers_pb.GetPayoutRequest(payout_id=str(request.payout_id))
            )
            return _outcome(found.payout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                log.warning(
                    "payout not readable; asking again later",
                    extra={"payout_id": str(request.payout_id), "peer_code": exc.code().name},
                )
                return None
        try:
            created = await self.transfers.CreatePayout(
                transfers_pb.CreatePayoutRequest(
                    payout_id=str(request.payout_id),
                    source_wallet_id=str(request.source_wallet_id),
                    destination=request.destination,
                    amount=Money(amount_minor=request.amount_minor, currency=request.currency),
                )
            )
            return _outcome(created.payout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _REFUSALS:
                log.warning(
                    "payout outcome unknown; asking again later",
                    extra={"payout_id": str(request.payout_id), "peer_code": exc.code().name},
                )
                return None
            status = rpc_status.from_call(exc)  # type: ignore[arg-type]
            info = error_info(status) if status else None
            reason = (info.metadata.get("failure_reason") or info.reason) if info else exc.code().name
            return PayoutOutcome(completed=False, failure_reason=reason)


def _outcome(payout: transfers_pb.Payout) -> PayoutOutcome | None:
    if payout.state == Payout.STATE_COMPLETED:
        return PayoutOutcome(completed=True)
    if payout.state == Payout.STATE_FAILED:
        return PayoutOutcome(completed=False, failure_reason=payout.failure_reason or "FAILED")
    return None
