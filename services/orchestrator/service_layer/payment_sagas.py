"""The payment, capture, cancel and refund sagas, step by step.

Payment:  card → fraud → [review: halt] → merchant → authorize → authorized → capture (the
pivot) → fee → captured. A refusal before the pivot undoes the authorisation and records
the payment FAILED; past it, steps only go forward. Each step calls its peers with the
idempotency key `<saga id>-<step>`, so a repeated step is harmless.

The payer is a wallet or a card. A wallet payment authorises with a wallet hold (undone by
releasing it) and captures the hold to the merchant's settlement wallet. A card payment
authorises through the card processor (undone by a void) after the vault detokenises the
card for it; capture asks the processor for the money and credits the merchant from the
funding account, through which card money enters the ledger. Refunds run the other way.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from interpay.common.v1.money_pb2 import Money
from interpay.fraud.v1 import fraud_service_pb2 as fraud_pb
from interpay.fraud.v1.fraud_service_pb2_grpc import FraudServiceStub
from interpay.merchants.v1 import merchants_service_pb2 as merchants_pb
from interpay.merchants.v1.merchants_service_pb2_grpc import MerchantsServiceStub
from interpay.orchestrator.v1 import orchestrator_service_pb2 as pb
from interpay.payments.v1 import payments_service_pb2 as payments_pb
from interpay.payments.v1.payments_service_pb2_grpc import PaymentServiceStub
from interpay.vault.v1 import vault_service_pb2 as vault_pb
from interpay.vault.v1.vault_service_pb2_grpc import VaultServiceStub
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.orchestrator.adapters.card_processor import (
    CardDetails,
    ProcessorDeclined,
    ProcessorTimeout,
    SimulatedProcessor,
)
from services.orchestrator.domain.saga import BusinessFailure, SagaContext, SagaDefinition, Step
from services.orchestrator.service_layer.engine import classify

AUTHORIZATION_TTL = timedelta(days=7)
Payment = payments_pb.Payment
# ErrorInfo reasons of a failed step -> the payment's failure code.
_FAILURE_CODES = {
    "INSUFFICIENT_FUNDS": payments_pb.FAILURE_CODE_INSUFFICIENT_FUNDS,
    "WALLET_NOT_ACTIVE": payments_pb.FAILURE_CODE_WALLET_NOT_ACTIVE,
    "CURRENCY_MISMATCH": payments_pb.FAILURE_CODE_CURRENCY_MISMATCH,
    "FRAUD_DECLINED": payments_pb.FAILURE_CODE_FRAUD_DECLINED,
    "CARD_DECLINED": payments_pb.FAILURE_CODE_CARD_DECLINED,
    "CARD_EXPIRED": payments_pb.FAILURE_CODE_CARD_EXPIRED,
    "INCORRECT_CVV": payments_pb.FAILURE_CODE_INCORRECT_CVV,
    "PROCESSOR_UNAVAILABLE": payments_pb.FAILURE_CODE_PROCESSOR_UNAVAILABLE,
}


def fee_for(amount: int, fee_bps: int) -> int:
    """The platform fee in minor units, rounded half up (integers only)."""
    return (amount * fee_bps + 5_000) // 10_000


def _by_card(ctx: SagaContext) -> bool:
    return bool(ctx.input.card_token)


def _declined(ctx: SagaContext) -> bool:
    return bool(ctx.results.get("fraud", {}).get("decision") == "DECLINE")


def _paid_by_card(ctx: SagaContext) -> bool:
    return bool(ctx.results["payment"].get("processor_reference"))


def _timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


class PaymentSagas:
    def __init__(
        self,
        payments: PaymentServiceStub,
        wallet: WalletServiceStub,
        fraud: FraudServiceStub,
        merchants: MerchantsServiceStub,
        vault: VaultServiceStub,
        processor: SimulatedProcessor,
    ) -> None:
        self.payments = payments
        self.wallet = wallet
        self.fraud = fraud
        self.merchants = merchants
        self.vault = vault
        self.processor = processor
        self._system_wallets: dict[tuple[int, str], str] = {}

    def definitions(self) -> dict[str, SagaDefinition]:
        automatic = self._automatic
        payment = SagaDefinition(
            "PAYMENT",
            pb.PaymentSagaInput,
            (
                Step("card", self._card, when=_by_card),
                Step("fraud", self._check_fraud, when=lambda c: not c.input.review_approved),
                Step("verdict", self._refuse_if_declined, when=_declined),
                Step(
                    "review",
                    self._send_to_review,
                    when=lambda c: c.results.get("fraud", {}).get("decision") == "REVIEW",
                ),
                Step("merchant", self._merchant),
                Step("authorize", self._authorize, compensate=self._void_authorization),
                Step("authorized", self._record_authorized),
                Step("capture", self._capture, when=automatic),
                Step("fee", self._take_fee, when=automatic, forward_only=True),
                Step("captured", self._record_captured, when=automatic, forward_only=True),
            ),
            on_failure=self._record_failed,
        )
        capture = SagaDefinition(
            "CAPTURE",
            pb.CaptureSagaInput,
            (
                Step("payment", self._authorized_payment),
                Step("merchant", self._merchant),
                Step("capture", self._capture),
                Step("fee", self._take_fee, forward_only=True),
                Step("captured", self._record_captured, forward_only=True),
            ),
        )
        cancel = SagaDefinition(
            "CANCEL",
            pb.CancelSagaInput,
            (
                Step("payment", self._cancellable_payment),
                Step("release", self._release_for_cancel),
                Step("cancelled", self._record_cancelled, forward_only=True),
            ),
        )
        refund = SagaDefinition(
            "REFUND",
            pb.RefundSagaInput,
            (
                Step("payment", self._refundable_payment),
                Step("merchant", self._merchant),
                Step("refund", self._refund),
                Step("card-refund", self._refund_card, when=_paid_by_card, forward_only=True),
                Step("recorded", self._record_refunded, forward_only=True),
            ),
            on_failure=self._record_refund_failed,
        )
        return {d.saga_type: d for d in (payment, capture, cancel, refund)}

    # -- helpers --------------------------------------------------------------------------
    @staticmethod
    def _automatic(ctx: SagaContext) -> bool:
        return ctx.input.capture_method != payments_pb.CAPTURE_METHOD_MANUAL

    async def _transition(
        self, ctx: SagaContext, step: str, to_state: Any, reason: str, **fields: Any
    ) -> payments_pb.Payment:
        reply = await self.payments.RecordPaymentTransition(
            payments_pb.RecordPaymentTransitionRequest(
                payment_id=ctx.input.payment_id,
                to_state=to_state,
                reference=ctx.key(step),
                reason=reason,
                **fields,
            )
        )
        return reply.payment

    async def _payment(self, ctx: SagaContext) -> payments_pb.Payment:
        reply = await self.payments.GetPayment(payments_pb.GetPaymentRequest(payment_id=ctx.input.payment_id))
        return reply.payment

    # -- payment steps ----------------------------------------------------------------------
    async def _check_fraud(self, ctx: SagaContext) -> dict[str, Any]:
        i: pb.PaymentSagaInput = ctx.input
        client = i.client_context
        geo = None  # only what the edge actually knew: an empty country is not a country
        if client.geo.country_code:
            geo = fraud_pb.GeoLocation(country_code=client.geo.country_code)
            if client.geo.HasField("latitude"):
                geo.latitude, geo.longitude = client.geo.latitude, client.geo.longitude
        reply = await self.fraud.CheckTransaction(
            fraud_pb.CheckTransactionRequest(
                reference=ctx.key("fraud"),
                transaction_kind=fraud_pb.TRANSACTION_KIND_PAYMENT,
                transaction_id=i.payment_id,
                user_id=i.payer_user_id,
                merchant_id=i.merchant_id,
                amount=i.amount,
                payment_method_kind=fraud_pb.PAYMENT_METHOD_KIND_CARD
                if i.card_token
                else fraud_pb.PAYMENT_METHOD_KIND_WALLET,
                card_fingerprint=ctx.results.get("card", {}).get("fingerprint", ""),
                device_fingerprint=client.device_fingerprint,
                ip_address=client.ip_address,
                geo=geo,
                email=client.email,
                occur_time=_timestamp(ctx.started_at),
            )
        )
        check = reply.fraud_check
        decision = fraud_pb.Decision.Name(check.decision).removeprefix("DECISION_")
        reasons = [rule.reason for rule in check.fired_rules]
        return {
            "decision": decision,
            "check_id": check.check_id,
            "risk_score": check.risk_score,
            "reasons": reasons,
            "degraded": check.degraded,
        }

    async def _refuse_if_declined(self, ctx: SagaContext) -> dict[str, Any]:
        """A separate step, so that the check's verdict is recorded with the saga and the
        failed payment carries it for the merchant to read."""
        reasons = ctx.results["fraud"]["reasons"]
        raise BusinessFailure("FRAUD_DECLINED", "declined by the fraud rules: " + "; ".join(reasons))

    def _assessment(self, ctx: SagaContext) -> payments_pb.FraudAssessment:
        fraud = ctx.results.get("fraud", {})
        if not fraud or fraud.get("skipped"):
            return payments_pb.FraudAssessment()
        return payments_pb.FraudAssessment(
            check_id=fraud["check_id"],
            risk_score=fraud["risk_score"],
            decision=payments_pb.FraudDecision.Value(f"FRAUD_DECISION_{fraud['decision']}"),
            reasons=fraud["reasons"],
            degraded=fraud["degraded"],
        )

    async def _send_to_review(self, ctx: SagaContext) -> dict[str, Any]:
        await self._transition(
            ctx,
            "review",
            Payment.STATE_REQUIRES_REVIEW,
            "the fraud rules sent the payment to manual review",
            fraud_assessment=self._assessment(ctx),
        )
        return {"halt": True}

    async def _merchant(self, ctx: SagaContext) -> dict[str, Any]:
        merchant_id = ctx.results.get("payment", {}).get("merchant_id") or ctx.input.merchant_id
        m = await self.merchants.GetMerchantForPayment(
            merchants_pb.GetMerchantForPaymentRequest(merchant_id=merchant_id)
        )
        if m.state != merchants_pb.Merchant.STATE_ACTIVE:
            raise BusinessFailure("MERCHANT_NOT_ACTIVE", f"merchant {merchant_id} cannot take payments")
        amount: Money = ctx.input.amount
        if m.settlement_currency != amount.currency:
            raise BusinessFailure(
                "CURRENCY_MISMATCH", f"the merchant settles in {m.settlement_currency}, not {amount.currency}"
            )
        return {"settlement_wallet_id": m.settlement_wallet_id, "fee_bps": m.fee_bps}

    async def _card(self, ctx: SagaContext) -> dict[str, Any]:
        """What the vault may say about the card: its fingerprint, for the fraud rules."""
        reply = await self.vault.GetCard(vault_pb.GetCardRequest(token=ctx.input.card_token))
        return {"fingerprint": reply.card.fingerprint}

    async def _authorize(self, ctx: SagaContext) -> dict[str, Any]:
        if ctx.input.card_token:
            return await self._authorize_card(ctx)
        return await self._place_hold(ctx)

    async def _void_authorization(self, ctx: SagaContext) -> None:
        result = ctx.results["authorize"]
        if "processor_reference" in result:
            await self.processor.void(authorization=result["processor_reference"])
        else:
            await self._release_hold(ctx)

    async def _authorize_card(self, ctx: SagaContext) -> dict[str, Any]:
        i: pb.PaymentSagaInput = ctx.input
        card = await self.vault.DetokenizeCard(
            vault_pb.DetokenizeCardRequest(token=i.card_token, payment_id=i.payment_id)
        )
        secret = ctx.secret
        details = CardDetails(
            pan=card.pan,
            expiry_month=card.expiry_month,
            expiry_year=card.expiry_year,
            cvv=secret.cvv if secret is not None else "",  # type: ignore[attr-defined]
        )
        reference = ctx.key("authorize")
        try:
            authorization = await asyncio.wait_for(
                self.processor.authorize(reference, details, i.amount), self.processor.timeout_seconds
            )
        except (ProcessorTimeout, TimeoutError):
            # The answer never came: the authorisation may exist. Void it so the payer
            # cannot be charged, then fail the payment.
            await self.processor.void(request_reference=reference)
            raise BusinessFailure(
                "PROCESSOR_UNAVAILABLE", "the card processor did not answer in time; nothing was charged"
            ) from None
        except ProcessorDeclined as declined:
            raise BusinessFailure(declined.code, declined.message) from None
        expires = datetime.now(UTC) + AUTHORIZATION_TTL
        return {"processor_reference": authorization, "expire_time": _timestamp(expires).ToJsonString()}

    async def _place_hold(self, ctx: SagaContext) -> dict[str, Any]:
        i: pb.PaymentSagaInput = ctx.input
        expires = datetime.now(UTC) + AUTHORIZATION_TTL
        reply = await self.wallet.PlaceHold(
            wallet_pb.PlaceHoldRequest(
                wallet_id=i.payer_wallet_id,
                amount=i.amount,
                reference=ctx.key("authorize"),
                expire_time=_timestamp(expires),
            )
        )
        return {"hold_id": reply.hold.hold_id, "expire_time": reply.hold.expire_time.ToJsonString()}

    async def _release_hold(self, ctx: SagaContext) -> None:
        await self.wallet.ReleaseHold(
            wallet_pb.ReleaseHoldRequest(hold_id=ctx.results["authorize"]["hold_id"])
        )

    async def _record_authorized(self, ctx: SagaContext) -> dict[str, Any]:
        authorization = ctx.results["authorize"]
        expires = Timestamp()
        expires.FromJsonString(authorization["expire_time"])
        if "processor_reference" in authorization:
            how = {"processor_reference": authorization["processor_reference"]}
            reason = "authorised by the card processor"
        else:
            how = {"wallet_hold_id": authorization["hold_id"]}
            reason = "funds held on the payer's wallet"
        await self._transition(
            ctx,
            "authorized",
            Payment.STATE_AUTHORIZED,
            reason,
            fraud_assessment=self._assessment(ctx),
            authorization_expire_time=expires,
            **how,
        )
        return {}

    def _authorization(self, ctx: SagaContext) -> dict[str, str]:
        """The hold or the card authorisation: this saga's own, or the payment's."""
        source = ctx.results["authorize"] if "authorize" in ctx.results else ctx.results["payment"]
        return {key: source.get(key, "") for key in ("hold_id", "processor_reference")}

    async def _capture(self, ctx: SagaContext) -> dict[str, Any]:
        amount: Money = ctx.input.amount
        authorization = self._authorization(ctx)
        if authorization["processor_reference"]:
            return await self._capture_card(ctx, authorization["processor_reference"])
        reply = await self.wallet.CaptureHold(
            wallet_pb.CaptureHoldRequest(
                hold_id=authorization["hold_id"],
                destination_wallet_id=ctx.results["merchant"]["settlement_wallet_id"],
                amount=amount,
                reference=ctx.key("capture"),
            )
        )
        return {
            "transaction_id": reply.transaction_id,
            "captured_minor": amount.amount_minor,
            "currency": amount.currency,
        }

    async def _capture_card(self, ctx: SagaContext, authorization: str) -> dict[str, Any]:
        """The processor captures on the card (the rest of the authorisation lapses), and
        the same money enters the ledger from the funding account to the merchant."""
        amount: Money = ctx.input.amount
        reference = ctx.key("capture")
        await self.processor.capture(authorization, amount, reference)
        funding = await self._system_wallet(wallet_pb.SYSTEM_ACCOUNT_FUNDING, amount.currency)
        reply = await self.wallet.TransferFunds(
            wallet_pb.TransferFundsRequest(
                source_wallet_id=funding,
                destination_wallet_id=ctx.results["merchant"]["settlement_wallet_id"],
                amount=amount,
                reference=reference,
                kind=wallet_pb.TRANSACTION_KIND_CAPTURE,
                description=f"card capture for payment {ctx.input.payment_id}",
            )
        )
        return {
            "transaction_id": reply.transaction_id,
            "captured_minor": amount.amount_minor,
            "currency": amount.currency,
        }

    async def _system_wallet(self, account: int, currency: str) -> str:
        """A system wallet's id; they never change, so each is asked for once per process."""
        if (account, currency) not in self._system_wallets:
            reply = await self.wallet.GetSystemWallet(
                wallet_pb.GetSystemWalletRequest(account=account, currency=currency)  # type: ignore[arg-type]
            )
            self._system_wallets[(account, currency)] = str(reply.wallet.wallet_id)
        return self._system_wallets[(account, currency)]

    async def _take_fee(self, ctx: SagaContext) -> dict[str, Any]:
        captured = ctx.results["capture"]
        fee = fee_for(captured["captured_minor"], ctx.results["merchant"]["fee_bps"])
        if fee == 0:
            return {"fee_minor": 0}
        fees = await self._system_wallet(wallet_pb.SYSTEM_ACCOUNT_FEES, captured["currency"])
        await self.wallet.TransferFunds(
            wallet_pb.TransferFundsRequest(
                source_wallet_id=ctx.results["merchant"]["settlement_wallet_id"],
                destination_wallet_id=fees,
                amount=Money(amount_minor=fee, currency=captured["currency"]),
                reference=ctx.key("fee"),
                kind=wallet_pb.TRANSACTION_KIND_FEE,
                description=f"fee for payment {ctx.input.payment_id}",
            )
        )
        return {"fee_minor": fee}

    async def _record_captured(self, ctx: SagaContext) -> dict[str, Any]:
        captured = ctx.results["capture"]
        await self._transition(
            ctx,
            "captured",
            Payment.STATE_CAPTURED,
            "captured to the merchant's settlement wallet",
            captured_amount=Money(amount_minor=captured["captured_minor"], currency=captured["currency"]),
            fee_amount=Money(amount_minor=ctx.results["fee"]["fee_minor"], currency=captured["currency"]),
        )
        return {}

    async def _record_failed(self, ctx: SagaContext) -> None:
        failure = ctx.failure
        assert failure is not None
        await self._transition(
            ctx,
            "failed",
            Payment.STATE_FAILED,
            failure.message[:256] or failure.reason,
            failure_code=_FAILURE_CODES.get(failure.reason, payments_pb.FAILURE_CODE_INTERNAL),
            fraud_assessment=self._assessment(ctx),
        )

    # -- capture / cancel / refund steps ----------------------------------------------------
    def _payment_facts(self, p: payments_pb.Payment) -> dict[str, Any]:
        return {
            "merchant_id": p.merchant_id,
            "hold_id": p.wallet_hold_id,
            "processor_reference": p.processor_reference,
            "payer_wallet_id": p.payer_wallet_id,
            "amount_minor": p.amount.amount_minor,
            "currency": p.amount.currency,
            "state": Payment.State.Name(p.state),
        }

    async def _authorized_payment(self, ctx: SagaContext) -> dict[str, Any]:
        p = await self._payment(ctx)
        if p.state != Payment.STATE_AUTHORIZED:
            raise BusinessFailure(
                "INVALID_STATE", f"payment is {Payment.State.Name(p.state)}, not AUTHORIZED"
            )
        if ctx.input.amount.amount_minor > p.amount.amount_minor:
            raise BusinessFailure(
                "CAPTURE_EXCEEDS_AUTHORIZED",
                f"capture of {ctx.input.amount.amount_minor} exceeds the {p.amount.amount_minor} authorised",
            )
        return self._payment_facts(p)

    async def _cancellable_payment(self, ctx: SagaContext) -> dict[str, Any]:
        p = await self._payment(ctx)
        if p.state not in (Payment.STATE_AUTHORIZED, Payment.STATE_REQUIRES_REVIEW, Payment.STATE_PENDING):
            raise BusinessFailure(
                "INVALID_STATE", f"payment is {Payment.State.Name(p.state)} and cannot be cancelled"
            )
        return self._payment_facts(p)

    async def _release_for_cancel(self, ctx: SagaContext) -> dict[str, Any]:
        if ctx.results["payment"].get("processor_reference"):
            await self.processor.void(authorization=ctx.results["payment"]["processor_reference"])
            return {}
        hold_id = ctx.results["payment"]["hold_id"]
        if hold_id:
            try:
                await self.wallet.ReleaseHold(wallet_pb.ReleaseHoldRequest(hold_id=hold_id))
            except Exception as exc:  # an expired hold has released itself
                failure = classify(exc)
                if not (isinstance(failure, BusinessFailure) and failure.reason == "HOLD_NOT_ACTIVE"):
                    raise
        return {}

    async def _record_cancelled(self, ctx: SagaContext) -> dict[str, Any]:
        await self._transition(ctx, "cancelled", Payment.STATE_CANCELLED, ctx.input.reason)
        return {}

    async def _refundable_payment(self, ctx: SagaContext) -> dict[str, Any]:
        p = await self._payment(ctx)
        if p.state not in (Payment.STATE_CAPTURED, Payment.STATE_PARTIALLY_REFUNDED):
            raise BusinessFailure(
                "INVALID_STATE", f"payment is {Payment.State.Name(p.state)} and cannot be refunded"
            )
        return self._payment_facts(p)

    async def _refund(self, ctx: SagaContext) -> dict[str, Any]:
        """The merchant pays the refund back: to the payer's wallet, or for a card to the
        funding account, from which the next step sends it to the card."""
        i: pb.RefundSagaInput = ctx.input
        facts = ctx.results["payment"]
        if facts.get("processor_reference"):
            destination = await self._system_wallet(wallet_pb.SYSTEM_ACCOUNT_FUNDING, i.amount.currency)
        else:
            destination = facts["payer_wallet_id"]
        reply = await self.wallet.TransferFunds(
            wallet_pb.TransferFundsRequest(
                source_wallet_id=ctx.results["merchant"]["settlement_wallet_id"],
                destination_wallet_id=destination,
                amount=i.amount,
                reference=ctx.key("refund"),
                kind=wallet_pb.TRANSACTION_KIND_REFUND,
                description=f"refund {i.refund_id} of payment {i.payment_id}",
            )
        )
        return {"transaction_id": reply.transaction_id}

    async def _refund_card(self, ctx: SagaContext) -> dict[str, Any]:
        reference = await self.processor.refund(
            ctx.results["payment"]["processor_reference"], ctx.input.amount, ctx.key("card-refund")
        )
        return {"processor_refund": reference}

    async def _record_refunded(self, ctx: SagaContext) -> dict[str, Any]:
        await self.payments.RecordRefundOutcome(
            payments_pb.RecordRefundOutcomeRequest(
                refund_id=ctx.input.refund_id,
                state=payments_pb.Refund.STATE_SUCCEEDED,
                reference=ctx.key("recorded"),
            )
        )
        return {}

    async def _record_refund_failed(self, ctx: SagaContext) -> None:
        assert ctx.failure is not None
        await self.payments.RecordRefundOutcome(
            payments_pb.RecordRefundOutcomeRequest(
                refund_id=ctx.input.refund_id,
                state=payments_pb.Refund.STATE_FAILED,
                reference=ctx.key("refund-failed"),
                failure_reason=f"{ctx.failure.reason}: {ctx.failure.message}"[:256],
            )
        )
