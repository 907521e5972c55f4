"""The payments service's domain events, written to its outbox (services/framework/outbox.py)
in the transaction that records the change.

Payments: every version of a payment row is exactly one event on topic
`interpay.events.v1.payment`, keyed by the payment id, `aggregate_version` = the
payment's version, payload the contract's `interpay.payments.v1.Payment` as it stands
after the change. The payment message carries what may be shown of a card (brand, last4,
expiry) and the vault token, never a card number or CVV.

| event_type (interpay.payments.v1.…) | the payment became |
|---|---|
| PaymentCreated | INITIATED (version 1, written with its creation) |
| PaymentPending | PENDING (handed to the saga, or a review approved) |
| PaymentRequiresReview | REQUIRES_REVIEW |
| PaymentAuthorized | AUTHORIZED |
| PaymentCaptured | CAPTURED |
| PaymentPartiallyRefunded, PaymentRefunded | after a successful refund |
| PaymentFailed, PaymentCancelled | FAILED, CANCELLED |

Refunds: on topic `interpay.events.v1.refund`, keyed by the refund id, payload
`interpay.payments.v1.Refund`: RefundCreated (version 1, when it is accepted), then
RefundSucceeded or RefundFailed (version 2, its outcome). A successful refund also moves
the payment, so it is seen on the payment topic as well (PaymentPartiallyRefunded or
PaymentRefunded, with the payment's refunded amount and merchant).
"""

from __future__ import annotations

from services.framework.outbox import Event, Outbox
from services.payments.domain.model import Payment, Refund, State

OUTBOX = Outbox("payments")
PAYMENT = "payment"
REFUND = "refund"
_PREFIX = "interpay.payments.v1."

PAYMENT_EVENTS = {
    State.INITIATED: "PaymentCreated",
    State.PENDING: "PaymentPending",
    State.REQUIRES_REVIEW: "PaymentRequiresReview",
    State.AUTHORIZED: "PaymentAuthorized",
    State.CAPTURED: "PaymentCaptured",
    State.PARTIALLY_REFUNDED: "PaymentPartiallyRefunded",
    State.REFUNDED: "PaymentRefunded",
    State.FAILED: "PaymentFailed",
    State.CANCELLED: "PaymentCancelled",
}
REFUND_EVENTS = {"PENDING": "RefundCreated", "SUCCEEDED": "RefundSucceeded", "FAILED": "RefundFailed"}


def payment_event(payment: Payment) -> Event:
    from services.payments.entrypoints.grpc_api import payment_pb  # the contract's message

    return Event(
        PAYMENT,
        str(payment.payment_id),
        payment.version,
        payment_pb(payment),
        _PREFIX + PAYMENT_EVENTS[payment.state],
    )


def refund_event(refund: Refund) -> Event:
    from services.payments.entrypoints.grpc_api import refund_pb

    return Event(
        REFUND,
        str(refund.refund_id),
        1 if refund.state == "PENDING" else 2,
        refund_pb(refund),
        _PREFIX + REFUND_EVENTS[refund.state],
    )
