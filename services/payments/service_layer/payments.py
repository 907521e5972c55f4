"""Payments: the edge of the payment flow. Records the payment, hands the work to an
orchestrator saga, and answers with the payment as the saga left it.

Idempotency (the `Idempotency-Key` header, gRPC metadata `idempotency-key`): the payment's
id is derived from the merchant and the key, and the request's hash is stored on the
payment in the same transaction that creates it. A retry finds the same payment and
answers with it as it stands (replaying a failure as the same failure); the same key with
another request is IDEMPOTENCY_MISMATCH; a retry while the first is still running gets
ABORTED / REQUEST_IN_PROGRESS and may retry. Keys live as long as their payments.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from interpay.common.v1.money_pb2 import Money
from interpay.orchestrator.v1 import orchestrator_service_pb2 as saga_pb
from interpay.orchestrator.v1.orchestrator_service_pb2_grpc import OrchestratorServiceStub
from interpay.payments.v1 import payments_service_pb2 as pb
from interpay.vault.v1 import vault_service_pb2 as vault_pb
from interpay.vault.v1.vault_service_pb2_grpc import VaultServiceStub

from services.framework import paging
from services.framework.db import Database
from services.framework.errors import Aborted, FailedPrecondition, ServiceError
from services.payments.adapters.repository import PaymentRepository
from services.payments.domain.model import (
    Payment,
    PaymentNotFound,
    Refund,
    RefundNotFound,
    State,
    check_refund,
    check_transition,
    refund_state_after,
)

PAYMENT_NAMESPACE = uuid.UUID("8d3e6f2a-7b1c-4d9e-a5f0-1e2d3c4b5a69")
_TERMINAL_SAGA = {saga_pb.Saga.STATE_COMPLETED, saga_pb.Saga.STATE_COMPENSATED, saga_pb.Saga.STATE_FAILED}
# A failed payment's code -> the ErrorInfo reason its refusal is replayed with.
_REASONS = {
    "INSUFFICIENT_FUNDS": "INSUFFICIENT_FUNDS",
    "WALLET_NOT_ACTIVE": "WALLET_NOT_ACTIVE",
    "CURRENCY_MISMATCH": "CURRENCY_MISMATCH",
    "FRAUD_DECLINED": "FRAUD_DECLINED",
    "CARD_DECLINED": "CARD_DECLINED",
    "CARD_EXPIRED": "CARD_EXPIRED",
    "INCORRECT_CVV": "CARD_DECLINED",
    "PROCESSOR_UNAVAILABLE": "PROCESSOR_UNAVAILABLE",
}


def request_hash(message: Message, *, without: tuple[str, ...] = ()) -> str:
    copy = type(message)()
    copy.CopyFrom(message)
    for name in without:
        copy.ClearField(name)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def derived_id(scope: str, key: str) -> uuid.UUID:
    return uuid.uuid5(PAYMENT_NAMESPACE, f"{scope}:{key}")


_PAST_THE_PAYMENT_SAGA = frozenset(
    {State.CAPTURED, State.PARTIALLY_REFUNDED, State.REFUNDED, State.FAILED, State.CANCELLED}
)


class PaymentFailed(ServiceError):
    """Replays why a payment failed, every time it is asked for through the create call."""

    def __init__(self, payment: Payment) -> None:
        super().__init__(
            f"payment {payment.payment_id} failed: {payment.failure_reason}",
            reason=_REASONS.get(payment.failure_code, "INVALID_STATE"),
            metadata={"payment_id": str(payment.payment_id), "failure_code": payment.failure_code},
        )


class SagaRefused(FailedPrecondition):
    """A capture, cancel or refund saga compensated: its reason is the caller's answer."""

    def __init__(self, saga: saga_pb.Saga, what: str, resource_id: uuid.UUID) -> None:
        reason, _, message = saga.failure_reason.partition(": ")
        super().__init__(
            f"{what} refused: {message or reason}",
            reason=reason or "INVALID_STATE",
            metadata={"saga_id": saga.saga_id, "id": str(resource_id)},
        )


class RequestInProgress(Aborted):
    default_reason = "REQUEST_IN_PROGRESS"


class Payments:
    def __init__(
        self,
        db: Database,
        orchestrator: OrchestratorServiceStub,
        vault: VaultServiceStub,
        saga_deadline_seconds: float = 30.0,
    ) -> None:
        self.db = db
        self.orchestrator = orchestrator
        self.vault = vault
        self.saga_deadline = saga_deadline_seconds

    async def get(self, payment_id: uuid.UUID) -> Payment:
        async with self.db.transaction() as conn:
            payment = await PaymentRepository(conn).get(payment_id)
        if payment is None:
            raise PaymentNotFound(payment_id)
        return payment

    async def create(self, request: pb.CreatePaymentRequest, idempotency_key: str | None) -> Payment:
        card_summary = await self._card_summary(request.card_token) if request.card_token else None
        payment_id = derived_id(request.merchant_id, idempotency_key) if idempotency_key else uuid.uuid4()
        digest = request_hash(request, without=("cvv",))
        async with self.db.transaction() as conn:
            repo = PaymentRepository(conn)
            created = await repo.insert(
                {
                    "payment_id": payment_id,
                    "merchant_id": request.merchant_id,
                    "payer_wallet_id": request.payer_wallet_id or None,
                    "card_token": request.card_token or None,
                    "card_summary": card_summary,
                    "payer_user_id": request.payer_user_id or None,
                    "amount": request.amount.amount_minor,
                    "currency": request.amount.currency,
                    "capture_method": "MANUAL"
                    if request.capture_method == pb.CAPTURE_METHOD_MANUAL
                    else "AUTOMATIC",
                    "description": request.description,
                    "merchant_reference": request.merchant_reference,
                    "client_context": request.client_context.SerializeToString(deterministic=True),
                    "idempotency_key": idempotency_key,
                    "request_hash": digest,
                }
            )
            # A retry (or a concurrent request) with the key finds the first one's row.
            payment = created if created is not None else await repo.get(payment_id, lock=True)
            assert payment is not None
            if payment.request_hash != digest:
                raise FailedPrecondition(
                    "this Idempotency-Key was already used for a different payment request",
                    reason="IDEMPOTENCY_MISMATCH",
                    metadata={"payment_id": str(payment_id)},
                )
            if payment.state is State.INITIATED:
                payment = await repo.transition(
                    payment, State.PENDING, f"{payment_id}-pending", "handed to the payment saga"
                )
        if payment.state in _PAST_THE_PAYMENT_SAGA:
            # The payment saga has finished with it: a retry replays without a peer call.
            # (AUTHORIZED is not enough: an automatic capture may still be on its way.)
            return await self._settled(payment_id, None)
        saga = await self._start_payment_saga(payment, review_approved=False, cvv=request.cvv)
        return await self._settled(payment_id, saga)

    async def _card_summary(self, token: str) -> bytes:
        """What may be shown of the card; an unknown token is the vault's NOT_FOUND."""
        card = (await self.vault.GetCard(vault_pb.GetCardRequest(token=token))).card
        return pb.CardSummary(
            brand=card.brand,  # type: ignore[arg-type]  # the two enums share their values
            last4=card.last4,
            expiry_month=card.expiry_month,
            expiry_year=card.expiry_year,
        ).SerializeToString(deterministic=True)

    async def _start_payment_saga(
        self, payment: Payment, *, review_approved: bool, cvv: str = ""
    ) -> saga_pb.Saga:
        context = pb.ClientContext.FromString(payment.client_context)
        payer = (
            {"card_token": str(payment.card_token)}
            if payment.card_token
            else {"payer_wallet_id": str(payment.payer_wallet_id)}
        )
        reply = await self.orchestrator.StartPaymentSaga(
            saga_pb.StartPaymentSagaRequest(
                reference=f"payment:{payment.payment_id}{':approved' if review_approved else ''}",
                input=saga_pb.PaymentSagaInput(
                    payment_id=str(payment.payment_id),
                    merchant_id=str(payment.merchant_id),
                    cvv=cvv,
                    payer_user_id=str(payment.payer_user_id) if payment.payer_user_id else "",
                    amount=Money(amount_minor=payment.amount, currency=payment.currency),
                    capture_method=pb.CaptureMethod.Value(f"CAPTURE_METHOD_{payment.capture_method}"),
                    client_context=context,
                    review_approved=review_approved,
                    **payer,
                ),
            ),
            timeout=self.saga_deadline,
        )
        return reply.saga

    async def _settled(self, payment_id: uuid.UUID, saga: saga_pb.Saga | None) -> Payment:
        payment = await self.get(payment_id)
        if payment.state is State.FAILED:
            raise PaymentFailed(payment)
        if saga is not None and saga.state not in _TERMINAL_SAGA:
            raise RequestInProgress(
                f"payment {payment_id} is still being processed; retry the same request shortly",
                metadata={"payment_id": str(payment_id), "saga_id": saga.saga_id},
            )
        return payment

    async def transition(
        self,
        payment_id: uuid.UUID,
        to_state: State,
        reference: str,
        reason: str,
        failure_code: str,
        fields: dict[str, Any],
    ) -> Payment:
        """The orchestrator's record of a step: idempotent on `reference`."""
        async with self.db.transaction() as conn:
            repo = PaymentRepository(conn)
            payment, recorded = await repo.get_for_transition(payment_id, reference)
            if payment is None:
                raise PaymentNotFound(payment_id)
            if recorded:
                return payment
            check_transition(payment_id, payment.state, to_state)
            return await repo.transition(payment, to_state, reference, reason, failure_code, **fields)

    async def history(self, payment_id: uuid.UUID) -> list[dict[str, Any]]:
        await self.get(payment_id)
        async with self.db.transaction() as conn:
            return await PaymentRepository(conn).history(payment_id)

    async def list_payments(
        self,
        merchant_id: uuid.UUID,
        state: State | None,
        start: datetime | None,
        end: datetime | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Payment], str]:
        cursor = paging.decode(page_token)
        size = paging.page_size(page_size)
        async with self.db.transaction() as conn:
            rows = await PaymentRepository(conn).list_payments(
                merchant_id,
                state,
                start,
                end,
                size + 1,
                (cursor[0], cursor[1]) if cursor and len(cursor) == 2 else None,
            )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = paging.encode([rows[-1].created_at.isoformat(), str(rows[-1].payment_id)])
        return rows, token

    # -- capture, cancel, review ---------------------------------------------------------------
    async def capture(self, payment_id: uuid.UUID, amount: int | None) -> Payment:
        payment = await self.get(payment_id)
        check_transition(payment_id, payment.state, State.CAPTURED)
        reply = await self.orchestrator.StartCaptureSaga(
            saga_pb.StartCaptureSagaRequest(
                reference=f"capture:{payment_id}",
                input=saga_pb.CaptureSagaInput(
                    payment_id=str(payment_id),
                    amount=Money(amount_minor=amount or payment.amount, currency=payment.currency),
                ),
            ),
            timeout=self.saga_deadline,
        )
        if reply.saga.state == saga_pb.Saga.STATE_COMPENSATED:
            raise SagaRefused(reply.saga, "capture", payment_id)
        return await self.get(payment_id)

    async def cancel(self, payment_id: uuid.UUID, reason: str) -> Payment:
        payment = await self.get(payment_id)
        if payment.state is State.CANCELLED:
            return payment
        check_transition(payment_id, payment.state, State.CANCELLED)
        reply = await self.orchestrator.StartCancelSaga(
            saga_pb.StartCancelSagaRequest(
                reference=f"cancel:{payment_id}",
                input=saga_pb.CancelSagaInput(payment_id=str(payment_id), reason=reason),
            ),
            timeout=self.saga_deadline,
        )
        if reply.saga.state == saga_pb.Saga.STATE_COMPENSATED:
            raise SagaRefused(reply.saga, "cancellation", payment_id)
        return await self.get(payment_id)

    async def approve_review(self, payment_id: uuid.UUID) -> Payment:
        payment = await self.transition(
            payment_id, State.PENDING, f"{payment_id}-review-approved", "approved by a reviewer", "", {}
        )
        saga = await self._start_payment_saga(payment, review_approved=True)
        return await self._settled(payment_id, saga)

    async def reject_review(self, payment_id: uuid.UUID, reason: str) -> Payment:
        return await self.transition(
            payment_id,
            State.CANCELLED,
            f"{payment_id}-review-rejected",
            f"rejected by a reviewer: {reason}",
            "",
            {},
        )

    async def expire(self, review_timeout_seconds: float) -> int:
        """Cancels reviews nobody decided in time and fails authorisations never captured
        (their wallet holds expire on their own at the same moment)."""
        async with self.db.transaction() as conn:
            repo = PaymentRepository(conn)
            reviews = await repo.due(State.REQUIRES_REVIEW, review_timeout_seconds, 100)
            authorizations = await repo.due(State.AUTHORIZED, None, 100)
        for payment_id in reviews:
            await self.transition(
                payment_id,
                State.CANCELLED,
                f"{payment_id}-review-timeout",
                "no review decision in time",
                "",
                {},
            )
        for payment_id in authorizations:
            await self.transition(
                payment_id,
                State.FAILED,
                f"{payment_id}-authorization-expired",
                "the authorisation expired before capture",
                "AUTHORIZATION_EXPIRED",
                {},
            )
        return len(reviews) + len(authorizations)

    # -- refunds --------------------------------------------------------------------------------
    async def refund(
        self, payment_id: uuid.UUID, amount: int, reason: str, idempotency_key: str | None, digest: str
    ) -> Refund:
        refund_id = derived_id(str(payment_id), idempotency_key) if idempotency_key else uuid.uuid4()
        async with self.db.transaction() as conn:
            repo = PaymentRepository(conn)
            payment = await repo.get(payment_id, lock=True)  # serialises refunds of one payment
            if payment is None:
                raise PaymentNotFound(payment_id)
            existing = await repo.get_refund(refund_id)
            if existing is None:
                check_refund(payment, amount, await repo.refunds_outstanding(payment_id))
                await repo.insert_refund(refund_id, payment, amount, reason, digest)
            elif existing.request_hash != digest:
                raise FailedPrecondition(
                    "this Idempotency-Key was already used for a different refund",
                    reason="IDEMPOTENCY_MISMATCH",
                    metadata={"refund_id": str(refund_id)},
                )
        reply = await self.orchestrator.StartRefundSaga(
            saga_pb.StartRefundSagaRequest(
                reference=f"refund:{refund_id}",
                input=saga_pb.RefundSagaInput(
                    refund_id=str(refund_id),
                    payment_id=str(payment_id),
                    amount=Money(amount_minor=amount, currency=payment.currency),
                ),
            ),
            timeout=self.saga_deadline,
        )
        refund = await self.get_refund(refund_id)
        if refund.state == "FAILED":
            raise SagaRefused(reply.saga, "refund", refund_id)
        return refund

    async def get_refund(self, refund_id: uuid.UUID) -> Refund:
        async with self.db.transaction() as conn:
            refund = await PaymentRepository(conn).get_refund(refund_id)
        if refund is None:
            raise RefundNotFound(refund_id)
        return refund

    async def list_refunds(self, payment_id: uuid.UUID) -> list[Refund]:
        await self.get(payment_id)
        async with self.db.transaction() as conn:
            return await PaymentRepository(conn).list_refunds(payment_id)

    async def record_refund(
        self, refund_id: uuid.UUID, succeeded: bool, reference: str, failure_reason: str
    ) -> tuple[Refund, Payment]:
        async with self.db.transaction() as conn:
            repo = PaymentRepository(conn)
            refund = await repo.get_refund(refund_id, lock=True)
            if refund is None:
                raise RefundNotFound(refund_id)
            payment = await repo.get(refund.payment_id, lock=True)
            assert payment is not None
            if refund.state != "PENDING":
                return refund, payment  # already recorded: the saga repeated its step
            refund = await repo.settle_refund(
                refund_id, "SUCCEEDED" if succeeded else "FAILED", failure_reason
            )
            if succeeded:
                refunded = payment.refunded_amount + refund.amount
                payment = await repo.transition(
                    payment,
                    refund_state_after(payment.captured_amount, refunded),
                    reference,
                    f"refund {refund_id} of {refund.amount}",
                    refunded_amount=refunded,
                )
        return refund, payment
