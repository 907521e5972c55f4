"""What a user is told about an event: the notification templates, pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from interpay.common.v1.money_pb2 import Money
from interpay.payments.v1 import payments_service_pb2 as payments_pb
from interpay.transfers.v1 import transfers_service_pb2 as transfers_pb
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb

# ISO-4217 minor-unit exponents that are not 2.
_EXPONENTS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}  # fmt: skip


def amount_text(money: Money) -> str:
    """12345 EUR minor units -> "123.45 EUR" (integer arithmetic, no floats)."""
    exponent = _EXPONENTS.get(money.currency, 2)
    sign = "-" if money.amount_minor < 0 else ""
    whole, fraction = divmod(abs(money.amount_minor), 10**exponent)
    digits = f"{whole}.{fraction:0{exponent}d}" if exponent else str(whole)
    return f"{sign}{digits} {money.currency}"


@dataclass(frozen=True)
class Rendered:
    template: str
    title: str
    body: str


def payment_label(payment: payments_pb.Payment) -> str:
    """What a payment is called in its payer's notifications."""
    return payment.description or payment.merchant_reference


def for_payment(event_type: str, payment: payments_pb.Payment) -> Rendered | None:
    """The payer's notification for a payment event, or None if the event is not one a
    payer hears about. Refunds are told from the refund's own events (`for_refund`), one
    notification per refund: the payment's PaymentRefunded / PaymentPartiallyRefunded,
    which follow a successful refund, tell nothing more."""
    what = event_type.rsplit(".", 1)[-1]
    label = payment_label(payment) or "your payment"
    if what == "PaymentCaptured":
        return Rendered(
            "payment_captured",
            "Payment completed",
            f"You paid {amount_text(payment.captured_amount)} for {label}.",
        )
    if what == "PaymentFailed":
        return Rendered(
            "payment_failed",
            "Payment failed",
            f"Your payment of {amount_text(payment.amount)} for {label} did not go through; "
            "you were not charged.",
        )
    return None


def for_refund(event_type: str, refund: payments_pb.Refund, label: str) -> Rendered | None:
    """The payer's notification for a refund event (`label`: the payment's, as
    `payment_label` names it), or None for one a payer does not hear about (a refund
    accepted but not yet done)."""
    what = event_type.rsplit(".", 1)[-1]
    of = f"your payment for {label}" if label else "your payment"
    if what == "RefundSucceeded":
        return Rendered(
            "refund_succeeded",
            "Refund received",
            f"{amount_text(refund.amount)} of {of} has been refunded to you.",
        )
    if what == "RefundFailed":
        return Rendered(
            "refund_failed",
            "Refund failed",
            f"The refund of {amount_text(refund.amount)} of {of} could not be completed; "
            "the merchant can try again.",
        )
    return None


def for_wallet_entry(event_type: str, entry: wallet_pb.WalletTransaction) -> Rendered | None:
    """The wallet owner's notification for a ledger entry: transfers only (a payment's
    entries are told through the payment's own events)."""
    if entry.kind != wallet_pb.TRANSACTION_KIND_TRANSFER:
        return None
    amount = amount_text(Money(amount_minor=abs(entry.amount.amount_minor), currency=entry.amount.currency))
    balance = amount_text(entry.balance_after)
    if event_type.endswith(".FundsCredited"):
        return Rendered("transfer_received", "Money received", f"You received {amount}. Balance: {balance}.")
    if event_type.endswith(".FundsDebited"):
        return Rendered("transfer_sent", "Money sent", f"You sent {amount}. Balance: {balance}.")
    return None


def account_ending(account: transfers_pb.ExternalAccount) -> str:
    """The last four characters of a payout's destination (its events carry it masked)."""
    number = account.iban if account.HasField("iban") else account.domestic_account.account_number
    return number[-4:]


def for_payout(event_type: str, payout: transfers_pb.Payout) -> Rendered | None:
    """The wallet owner's notification of a payout's outcome (created and processing say
    nothing a user needs: the payout call itself answered them)."""
    amount = amount_text(payout.amount)
    ending = account_ending(payout.destination)
    if event_type.endswith(".PayoutCompleted"):
        return Rendered(
            "payout_completed", "Payout sent", f"{amount} was paid out to the account ending {ending}."
        )
    if event_type.endswith(".PayoutFailed"):
        return Rendered(
            "payout_failed",
            "Payout failed",
            f"Your payout of {amount} to the account ending {ending} failed ({payout.failure_reason}). "
            "The money stays in your wallet.",
        )
    return None
