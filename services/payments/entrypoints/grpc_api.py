"""The PaymentService servicer: proto in -> use case -> proto out, and who may see which
payment: a merchant only its own payments, a user only those they pay
(`payer_user_id`); another's payment or refund is answered exactly as one that does not
exist, before anything is done to it. Operators and peers see every payment."""

from __future__ import annotations

import uuid
from datetime import UTC
from typing import Any

from interpay.common.v1.money_pb2 import Money
from interpay.payments.v1 import payments_service_pb2 as pb

from services.framework import idempotency
from services.framework.edge_auth import Kind, current_principal
from services.framework.proto import timestamp
from services.payments.domain.model import Payment, PaymentNotFound, Refund, RefundNotFound, State
from services.payments.service_layer.payments import Payments, request_hash


def _may_see(payment: Payment) -> bool:
    principal = current_principal()
    if principal is None or principal.kind in (Kind.OPERATOR, Kind.SERVICE):
        return True
    if principal.kind is Kind.MERCHANT:
        return str(payment.merchant_id) == principal.subject
    return principal.kind is Kind.USER and str(payment.payer_user_id or "") == principal.subject


def payment_pb(p: Payment) -> pb.Payment:
    def money(amount: int) -> Money:
        return Money(amount_minor=amount, currency=p.currency)

    message = pb.Payment(
        payment_id=str(p.payment_id),
        merchant_id=str(p.merchant_id),
        payer_user_id=str(p.payer_user_id or ""),
        amount=money(p.amount),
        captured_amount=money(p.captured_amount),
        refunded_amount=money(p.refunded_amount),
        fee_amount=money(p.fee_amount),
        capture_method=pb.CaptureMethod.Value(f"CAPTURE_METHOD_{p.capture_method}"),
        description=p.description,
        merchant_reference=p.merchant_reference,
        state=pb.Payment.State.Value(f"STATE_{p.state.value}"),
        failure_code=pb.FailureCode.Value(f"FAILURE_CODE_{p.failure_code or 'UNSPECIFIED'}"),
        failure_reason=p.failure_reason,
        wallet_hold_id=str(p.wallet_hold_id or ""),
        processor_reference=p.processor_reference,
        version=p.version,
        create_time=timestamp(p.created_at),
        update_time=timestamp(p.updated_at),
    )
    if p.payer_wallet_id:
        message.payer_wallet_id = str(p.payer_wallet_id)
    if p.card_token:
        message.card_token = str(p.card_token)
    if p.card_summary:
        message.card.ParseFromString(p.card_summary)
    if p.fraud_assessment:
        message.fraud_assessment.ParseFromString(p.fraud_assessment)
    if p.authorization_expires_at:
        message.authorization_expire_time.CopyFrom(timestamp(p.authorization_expires_at))
    return message


def refund_pb(r: Refund) -> pb.Refund:
    return pb.Refund(
        refund_id=str(r.refund_id),
        payment_id=str(r.payment_id),
        amount=Money(amount_minor=r.amount, currency=r.currency),
        reason=r.reason,
        state=pb.Refund.State.Value(f"STATE_{r.state}"),
        failure_reason=r.failure_reason,
        create_time=timestamp(r.created_at),
        update_time=timestamp(r.updated_at),
    )


class PaymentServicer:
    def __init__(self, payments: Payments) -> None:
        self.payments = payments

    async def _visible(self, payment_id: str) -> Payment:
        """The payment, if the caller may see it; else the answer for one that does not exist."""
        payment = await self.payments.get(uuid.UUID(payment_id))
        if not _may_see(payment):
            raise PaymentNotFound(payment.payment_id)
        return payment

    async def CreatePayment(self, request: pb.CreatePaymentRequest, context: Any) -> pb.CreatePaymentResponse:
        payment = await self.payments.create(request, idempotency.header(context))
        return pb.CreatePaymentResponse(payment=payment_pb(payment))

    async def GetPayment(self, request: pb.GetPaymentRequest, context: Any) -> pb.GetPaymentResponse:
        return pb.GetPaymentResponse(payment=payment_pb(await self._visible(request.payment_id)))

    async def ListPayments(self, request: pb.ListPaymentsRequest, context: Any) -> pb.ListPaymentsResponse:
        rows, token = await self.payments.list_payments(
            uuid.UUID(request.merchant_id),
            State(pb.Payment.State.Name(request.state).removeprefix("STATE_")) if request.state else None,
            request.create_time_start.ToDatetime(tzinfo=UTC)
            if request.HasField("create_time_start")
            else None,
            request.create_time_end.ToDatetime(tzinfo=UTC) if request.HasField("create_time_end") else None,
            request.page_size,
            request.page_token,
        )
        return pb.ListPaymentsResponse(payments=[payment_pb(p) for p in rows], next_page_token=token)

    async def CapturePayment(
        self, request: pb.CapturePaymentRequest, context: Any
    ) -> pb.CapturePaymentResponse:
        amount = request.amount.amount_minor if request.HasField("amount") else None
        await self._visible(request.payment_id)
        payment = await self.payments.capture(uuid.UUID(request.payment_id), amount)
        return pb.CapturePaymentResponse(payment=payment_pb(payment))

    async def CancelPayment(self, request: pb.CancelPaymentRequest, context: Any) -> pb.CancelPaymentResponse:
        await self._visible(request.payment_id)
        payment = await self.payments.cancel(uuid.UUID(request.payment_id), request.reason)
        return pb.CancelPaymentResponse(payment=payment_pb(payment))

    async def RefundPayment(self, request: pb.RefundPaymentRequest, context: Any) -> pb.RefundPaymentResponse:
        await self._visible(request.payment_id)
        refund = await self.payments.refund(
            uuid.UUID(request.payment_id),
            request.amount.amount_minor,
            request.reason,
            idempotency.header(context),
            request_hash(request),
        )
        return pb.RefundPaymentResponse(refund=refund_pb(refund))

    async def GetRefund(self, request: pb.GetRefundRequest, context: Any) -> pb.GetRefundResponse:
        refund = await self.payments.get_refund(uuid.UUID(request.refund_id))
        if not _may_see(await self.payments.get(refund.payment_id)):
            raise RefundNotFound(refund.refund_id)
        return pb.GetRefundResponse(refund=refund_pb(refund))

    async def ListRefunds(self, request: pb.ListRefundsRequest, context: Any) -> pb.ListRefundsResponse:
        await self._visible(request.payment_id)
        refunds = await self.payments.list_refunds(uuid.UUID(request.payment_id))
        return pb.ListRefundsResponse(refunds=[refund_pb(r) for r in refunds])

    async def ListPaymentTransactions(
        self, request: pb.ListPaymentTransactionsRequest, context: Any
    ) -> pb.ListPaymentTransactionsResponse:
        await self._visible(request.payment_id)
        rows = await self.payments.history(uuid.UUID(request.payment_id))
        return pb.ListPaymentTransactionsResponse(
            transactions=[
                pb.PaymentTransaction(
                    transaction_id=str(r["transaction_id"]),
                    payment_id=str(r["payment_id"]),
                    from_state=pb.Payment.State.Value(f"STATE_{r['from_state']}"),
                    to_state=pb.Payment.State.Value(f"STATE_{r['to_state']}"),
                    reason=r["reason"],
                    failure_code=pb.FailureCode.Value(f"FAILURE_CODE_{r['failure_code'] or 'UNSPECIFIED'}"),
                    reference=r["reference"],
                    create_time=timestamp(r["created_at"]),
                )
                for r in rows
            ]
        )

    async def ApprovePaymentReview(
        self, request: pb.ApprovePaymentReviewRequest, context: Any
    ) -> pb.ApprovePaymentReviewResponse:
        payment = await self.payments.approve_review(uuid.UUID(request.payment_id))
        return pb.ApprovePaymentReviewResponse(payment=payment_pb(payment))

    async def RejectPaymentReview(
        self, request: pb.RejectPaymentReviewRequest, context: Any
    ) -> pb.RejectPaymentReviewResponse:
        payment = await self.payments.reject_review(uuid.UUID(request.payment_id), request.reason)
        return pb.RejectPaymentReviewResponse(payment=payment_pb(payment))

    async def RecordPaymentTransition(
        self, request: pb.RecordPaymentTransitionRequest, context: Any
    ) -> pb.RecordPaymentTransitionResponse:
        fields: dict[str, Any] = {}
        if request.HasField("captured_amount"):
            fields["captured_amount"] = request.captured_amount.amount_minor
        if request.HasField("fee_amount"):
            fields["fee_amount"] = request.fee_amount.amount_minor
        if request.wallet_hold_id:
            fields["wallet_hold_id"] = uuid.UUID(request.wallet_hold_id)
        if request.processor_reference:
            fields["processor_reference"] = request.processor_reference
        if request.HasField("fraud_assessment"):
            fields["fraud_assessment"] = request.fraud_assessment.SerializeToString(deterministic=True)
        if request.HasField("authorization_expire_time"):
            fields["authorization_expires_at"] = request.authorization_expire_time.ToDatetime(tzinfo=UTC)
        code = (
            pb.FailureCode.Name(request.failure_code).removeprefix("FAILURE_CODE_")
            if request.failure_code
            else ""
        )
        payment = await self.payments.transition(
            uuid.UUID(request.payment_id),
            State(pb.Payment.State.Name(request.to_state).removeprefix("STATE_")),
            request.reference,
            request.reason,
            code,
            fields,
        )
        return pb.RecordPaymentTransitionResponse(payment=payment_pb(payment))

    async def RecordRefundOutcome(
        self, request: pb.RecordRefundOutcomeRequest, context: Any
    ) -> pb.RecordRefundOutcomeResponse:
        refund, payment = await self.payments.record_refund(
            uuid.UUID(request.refund_id),
            request.state == pb.Refund.STATE_SUCCEEDED,
            request.reference,
            request.failure_reason,
        )
        return pb.RecordRefundOutcomeResponse(refund=refund_pb(refund), payment=payment_pb(payment))
