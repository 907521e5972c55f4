"""The transfer and payout sagas, step by step.

Transfer:  parties → fraud → transfer (the pivot: one ledger transaction) → recorded.
A refusal before the pivot moves no money and records the transfer FAILED with the
refusal's reason; the ledger transaction itself is all-or-nothing, so there is nothing to
compensate. Fraud: DECLINE fails the transfer, and so does REVIEW — P2P transfers have no
manual review queue, and a transfer nobody reviews must not go through.

Payout:  parties → fraud → hold (undone by a release) → rail (the decision) → capture to
payout clearing (the pivot) → processing → settlement → completed. The hold reserves the
funds while the rail decides; a rail that rejects the payout, at once or when asked later,
releases the hold and records the payout FAILED. Once the rail has taken the payout the
steps only go forward: the hold is captured to the PAYOUT_CLEARING system wallet, the
payout is recorded PROCESSING, and the saga waits (each wait a retried step) until the
rail reports it SETTLED, then records it COMPLETED. A rail that does not answer a send is
asked again by reference before anything is decided (see adapters/payout_rail.py), so
nobody is paid twice and no funds are released while the rail may still pay them.
Fraud: DECLINE and REVIEW both fail the payout (no review queue for payouts either).

Each step calls one peer with the idempotency key `<saga id>-<step>` (the transfer's ledger
movement with `transfer:<id>`, see `ledger_reference`); times sent are the saga's start
time, so a repeated step sends the same request.

A refusal that fails a flow carries the peer's ErrorInfo metadata in its message, as a
JSON object after the text, so the transfers service can answer the client with the same
details (for example the available balance behind INSUFFICIENT_FUNDS).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_status import rpc_status
from interpay.fraud.v1 import fraud_service_pb2 as fraud_pb
from interpay.fraud.v1.fraud_service_pb2_grpc import FraudServiceStub
from interpay.orchestrator.v1 import orchestrator_service_pb2 as pb
from interpay.transfers.v1 import transfers_service_pb2 as transfers_pb
from interpay.transfers.v1.transfers_service_pb2_grpc import TransfersServiceStub
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.framework.errors import error_info
from services.orchestrator.adapters.payout_rail import (
    RailPayout,
    RailStatus,
    RailTimeout,
    SimulatedPayoutRail,
)
from services.orchestrator.domain.saga import (
    BusinessFailure,
    SagaContext,
    SagaDefinition,
    Step,
    TransientFailure,
)
from services.orchestrator.service_layer.engine import classify

# Long enough for any rail to answer; the capture follows the rail's acceptance at once.
PAYOUT_HOLD_TTL = timedelta(days=30)
Transfer = transfers_pb.Transfer
Payout = transfers_pb.Payout


def _timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def ledger_reference(transfer_id: str) -> str:
    """The transfer's ledger reference: one per transfer, as one saga is (its reference is
    the transfer's too), and the one transfers used before they ran as sagas, so a transfer
    left PENDING by that code can never be moved a second time under another reference."""
    return f"transfer:{transfer_id}"


def refusal(exc: BaseException) -> BaseException:
    """A peer's business refusal as a BusinessFailure whose message carries the peer's
    ErrorInfo metadata; anything else unchanged, for the engine to classify."""
    failure = classify(exc)
    if not isinstance(failure, BusinessFailure) or not isinstance(exc, grpc.aio.AioRpcError):
        return exc
    status = rpc_status.from_call(exc)
    info = error_info(status) if status else None
    metadata = dict(info.metadata) if info else {}
    message = failure.message
    if metadata:
        message = f"{message} {json.dumps(metadata, sort_keys=True)}"
    return BusinessFailure(failure.reason, message)


class TransferSagas:
    def __init__(
        self,
        transfers: TransfersServiceStub,
        wallet: WalletServiceStub,
        fraud: FraudServiceStub,
        rail: SimulatedPayoutRail,
    ) -> None:
        self.transfers = transfers
        self.wallet = wallet
        self.fraud = fraud
        self.rail = rail

    def definitions(self) -> dict[str, SagaDefinition]:
        transfer = SagaDefinition(
            "TRANSFER",
            pb.TransferSagaInput,
            (
                Step("parties", self._transfer_parties),
                Step("fraud", self._check_transfer),
                Step("transfer", self._move_funds),
                Step("recorded", self._record_transfer_completed, forward_only=True),
            ),
            on_failure=self._record_transfer_failed,
        )
        payout = SagaDefinition(
            "PAYOUT",
            pb.PayoutSagaInput,
            (
                Step("parties", self._payout_parties),
                Step("fraud", self._check_payout),
                Step("hold", self._hold_funds, compensate=self._release_funds),
                Step("rail", self._send_to_rail),
                Step("capture", self._capture_to_clearing, forward_only=True),
                Step("processing", self._record_payout_processing, forward_only=True),
                Step("settlement", self._await_settlement, forward_only=True),
                Step("completed", self._record_payout_completed, forward_only=True),
            ),
            on_failure=self._record_payout_failed,
        )
        return {d.saga_type: d for d in (transfer, payout)}

    # -- shared steps ---------------------------------------------------------------------
    async def _owner(self, wallet_id: str) -> dict[str, str]:
        try:
            reply = await self.wallet.GetWallet(wallet_pb.GetWalletRequest(wallet_id=wallet_id))
        except grpc.aio.AioRpcError as exc:
            raise refusal(exc) from None
        wallet = reply.wallet
        return {
            "user_id": wallet.owner_id if wallet.owner_type == wallet_pb.OWNER_TYPE_USER else "",
            "currency": wallet.currency,
        }

    async def _fraud_check(
        self,
        ctx: SagaContext,
        kind: int,
        transaction_id: str,
        method: int,
        counterparty: str = "",
    ) -> dict[str, Any]:
        reply = await self.fraud.CheckTransaction(
            fraud_pb.CheckTransactionRequest(
                reference=ctx.key("fraud"),
                transaction_kind=kind,  # type: ignore[arg-type]
                transaction_id=transaction_id,
                user_id=ctx.results["parties"]["user_id"],
                counterparty_user_id=counterparty,
                amount=ctx.input.amount,
                payment_method_kind=method,  # type: ignore[arg-type]
                occur_time=_timestamp(ctx.started_at),
                # A user's device and IP, derived at the edge; empty for an operator's or a
                # service's transfer or payout.
                device_fingerprint=ctx.input.client_context.device_fingerprint,
                ip_address=ctx.input.client_context.ip_address,
            )
        )
        check = reply.fraud_check
        decision = fraud_pb.Decision.Name(check.decision).removeprefix("DECISION_")
        reasons = [rule.reason for rule in check.fired_rules]
        if decision in ("DECLINE", "REVIEW"):
            detail = {"check_id": check.check_id, "decision": decision}
            raise BusinessFailure(
                "FRAUD_DECLINED",
                f"declined by the fraud rules: {'; '.join(reasons) or decision} {json.dumps(detail)}",
            )
        return {"decision": decision, "check_id": check.check_id, "risk_score": check.risk_score}

    # -- transfer steps -------------------------------------------------------------------
    async def _transfer_parties(self, ctx: SagaContext) -> dict[str, Any]:
        i: pb.TransferSagaInput = ctx.input
        source = await self._owner(i.source_wallet_id)
        destination = await self._owner(i.destination_wallet_id)
        return {"user_id": source["user_id"], "counterparty_user_id": destination["user_id"]}

    async def _check_transfer(self, ctx: SagaContext) -> dict[str, Any]:
        return await self._fraud_check(
            ctx,
            fraud_pb.TRANSACTION_KIND_TRANSFER,
            ctx.input.transfer_id,
            fraud_pb.PAYMENT_METHOD_KIND_WALLET,
            counterparty=ctx.results["parties"]["counterparty_user_id"],
        )

    async def _move_funds(self, ctx: SagaContext) -> dict[str, Any]:
        i: pb.TransferSagaInput = ctx.input
        try:
            reply = await self.wallet.TransferFunds(
                wallet_pb.TransferFundsRequest(
                    source_wallet_id=i.source_wallet_id,
                    destination_wallet_id=i.destination_wallet_id,
                    amount=i.amount,
                    reference=ledger_reference(i.transfer_id),
                    kind=wallet_pb.TRANSACTION_KIND_TRANSFER,
                    description=i.description,
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise refusal(exc) from None
        return {"transaction_id": reply.transaction_id}

    async def _record_transfer_completed(self, ctx: SagaContext) -> dict[str, Any]:
        await self.transfers.RecordTransferOutcome(
            transfers_pb.RecordTransferOutcomeRequest(
                transfer_id=ctx.input.transfer_id,
                state=Transfer.STATE_COMPLETED,
                reference=ctx.key("recorded"),
                ledger_transaction_id=ctx.results["transfer"]["transaction_id"],
            )
        )
        return {}

    async def _record_transfer_failed(self, ctx: SagaContext) -> None:
        assert ctx.failure is not None
        await self.transfers.RecordTransferOutcome(
            transfers_pb.RecordTransferOutcomeRequest(
                transfer_id=ctx.input.transfer_id,
                state=Transfer.STATE_FAILED,
                reference=ctx.key("failed"),
                failure_reason=ctx.failure.reason[:256],
            )
        )

    # -- payout steps ---------------------------------------------------------------------
    async def _payout_parties(self, ctx: SagaContext) -> dict[str, Any]:
        return await self._owner(ctx.input.source_wallet_id)

    async def _check_payout(self, ctx: SagaContext) -> dict[str, Any]:
        return await self._fraud_check(
            ctx,
            fraud_pb.TRANSACTION_KIND_PAYOUT,
            ctx.input.payout_id,
            fraud_pb.PAYMENT_METHOD_KIND_BANK_ACCOUNT,
        )

    async def _hold_funds(self, ctx: SagaContext) -> dict[str, Any]:
        i: pb.PayoutSagaInput = ctx.input
        try:
            reply = await self.wallet.PlaceHold(
                wallet_pb.PlaceHoldRequest(
                    wallet_id=i.source_wallet_id,
                    amount=i.amount,
                    reference=ctx.key("hold"),
                    expire_time=_timestamp(ctx.started_at + PAYOUT_HOLD_TTL),
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise refusal(exc) from None
        return {"hold_id": reply.hold.hold_id}

    async def _release_funds(self, ctx: SagaContext) -> None:
        await self.wallet.ReleaseHold(wallet_pb.ReleaseHoldRequest(hold_id=ctx.results["hold"]["hold_id"]))

    async def _rail_payout(self, ctx: SagaContext) -> RailPayout:
        """What the rail did with this saga's payout, sending it first if the rail has
        never received it. An unanswered send is retried later as a lookup."""
        i: pb.PayoutSagaInput = ctx.input
        reference = ctx.key("rail")
        found = await self.rail.find(reference)
        if found is not None:
            return found
        try:
            return await self.rail.send(reference, i.destination, i.amount, ctx.started_at)
        except RailTimeout as exc:
            raise TransientFailure(f"{exc}; the payout will be looked up by its reference") from None

    async def _send_to_rail(self, ctx: SagaContext) -> dict[str, Any]:
        payout = await self._rail_payout(ctx)
        if payout.status is RailStatus.REJECTED:
            raise BusinessFailure(
                payout.return_code, f"the payout rail rejected the payout: {payout.message}"
            )
        return {"rail_reference": payout.rail_reference, "status": payout.status.value}

    async def _capture_to_clearing(self, ctx: SagaContext) -> dict[str, Any]:
        amount = ctx.input.amount
        clearing = await self.wallet.GetSystemWallet(
            wallet_pb.GetSystemWalletRequest(
                account=wallet_pb.SYSTEM_ACCOUNT_PAYOUT_CLEARING, currency=amount.currency
            )
        )
        reply = await self.wallet.CaptureHold(
            wallet_pb.CaptureHoldRequest(
                hold_id=ctx.results["hold"]["hold_id"],
                destination_wallet_id=clearing.wallet.wallet_id,
                amount=amount,
                reference=ctx.key("capture"),
            )
        )
        return {"transaction_id": reply.transaction_id}

    async def _record_payout(self, ctx: SagaContext, step: str, state: int, **fields: Any) -> None:
        await self.transfers.RecordPayoutOutcome(
            transfers_pb.RecordPayoutOutcomeRequest(
                payout_id=ctx.input.payout_id,
                state=state,  # type: ignore[arg-type]
                reference=ctx.key(step),
                **fields,
            )
        )

    async def _record_payout_processing(self, ctx: SagaContext) -> dict[str, Any]:
        await self._record_payout(
            ctx,
            "processing",
            Payout.STATE_PROCESSING,
            rail_reference=ctx.results["rail"]["rail_reference"],
            ledger_transaction_id=ctx.results["capture"]["transaction_id"],
        )
        return {}

    async def _await_settlement(self, ctx: SagaContext) -> dict[str, Any]:
        payout = await self._rail_payout(ctx)
        if payout.status is RailStatus.ACCEPTED:
            raise TransientFailure("the payout rail has not settled the payout yet")
        if payout.status is RailStatus.REJECTED:
            # The rail took the payout and then refused it: the funds sit in payout clearing
            # and need an operator (a real rail's return would add a step returning them).
            raise TransientFailure(f"the payout rail returned an accepted payout: {payout.return_code}")
        return {"status": payout.status.value}

    async def _record_payout_completed(self, ctx: SagaContext) -> dict[str, Any]:
        await self._record_payout(
            ctx, "completed", Payout.STATE_COMPLETED, rail_reference=ctx.results["rail"]["rail_reference"]
        )
        return {}

    async def _record_payout_failed(self, ctx: SagaContext) -> None:
        assert ctx.failure is not None
        await self._record_payout(ctx, "failed", Payout.STATE_FAILED, failure_reason=ctx.failure.reason[:256])
