"""The notifications service's pure parts: the webhook signature and its check, the retry
schedule (exponential, jittered, ending after the 24-hour window), the URL policy, and
amounts in notification texts."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest
from interpay.common.v1.money_pb2 import Money

from services.notifications.domain.templates import amount_text
from services.notifications.domain.webhooks import (
    RefusedUrl,
    RetryPolicy,
    check_url,
    signature_header,
    verify,
)

SECRET, BODY, T = "whsec_test", b'{"id":"e1","type":"interpay.payments.v1.PaymentCaptured"}', 1_790_000_000


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert signature_header(SECRET, T, BODY) == f"t={T},v1={expected}"


def test_verify_accepts_only_the_right_secret_body_and_a_fresh_timestamp() -> None:
    header = signature_header(SECRET, T, BODY)
    assert verify(header, BODY, SECRET, now=T + 299)
    assert not verify(header, BODY, SECRET, now=T + 301)  # a replay after five minutes
    assert not verify(header, BODY + b" ", SECRET, now=T)
    assert not verify(header, BODY, "whsec_other", now=T)
    rotated = f"{header},v1={'0' * 64}"  # one v1 per active secret during a rotation
    assert verify(rotated, BODY, SECRET, now=T)
    assert not verify("v1=abc", BODY, SECRET, now=T) and not verify("", BODY, SECRET, now=T)


def test_the_retry_schedule_grows_with_jitter_and_ends_after_the_window() -> None:
    policy = RetryPolicy(timedelta(seconds=30), timedelta(hours=1), timedelta(hours=24), max_attempts=1000)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    delays = []
    for attempts in range(1, 8):
        at = policy.next_attempt(start, attempts, start)
        assert at is not None
        delays.append((at - start).total_seconds())
        nominal = min(3600, 30 * 2 ** (attempts - 1))
        assert nominal / 2 <= delays[-1] <= nominal
    assert policy.next_attempt(start, 30, start + timedelta(hours=23, minutes=59, seconds=30)) is None
    assert policy.next_attempt(start, 3, start + timedelta(hours=1)) is not None
    capped = RetryPolicy(timedelta(seconds=1), timedelta(seconds=10), timedelta(hours=24), max_attempts=3)
    assert capped.next_attempt(start, 3, start) is None  # the round's attempts are spent


@pytest.mark.parametrize(
    ("url", "loopback_only", "refused"),
    [
        ("https://hooks.example.com/x", False, False),
        ("http://127.0.0.1:8000/x", False, False),
        ("http://127.0.0.1:8000/x", True, False),
        ("https://hooks.example.com/x", True, True),  # a local mesh posts to loopback only
        ("http://hooks.example.com/x", False, True),  # plain http only to loopback
        ("ftp://127.0.0.1/x", False, True),
        ("file:///etc/passwd", False, True),
        ("https://user:pw@hooks.example.com/", False, True),
    ],
)
def test_the_url_policy(url: str, loopback_only: bool, refused: bool) -> None:
    if refused:
        with pytest.raises(RefusedUrl):
            check_url(url, loopback_only)
    else:
        check_url(url, loopback_only)


def test_amounts_use_the_currency_exponent_and_integers() -> None:
    assert amount_text(Money(amount_minor=2599, currency="EUR")) == "25.99 EUR"
    assert amount_text(Money(amount_minor=5, currency="USD")) == "0.05 USD"
    assert amount_text(Money(amount_minor=1500, currency="JPY")) == "1500 JPY"
    assert amount_text(Money(amount_minor=1234, currency="KWD")) == "1.234 KWD"


def test_a_refund_is_told_to_its_payer_when_it_succeeds_or_fails_only() -> None:
    from interpay.payments.v1 import payments_service_pb2 as payments_pb

    from services.notifications.domain.templates import for_payment, for_refund

    refund = payments_pb.Refund(payment_id="p", amount=Money(amount_minor=1_250, currency="EUR"))
    done = for_refund("interpay.payments.v1.RefundSucceeded", refund, "order 7")
    assert done is not None and done.template == "refund_succeeded"
    assert done.body == "12.50 EUR of your payment for order 7 has been refunded to you."
    failed = for_refund("interpay.payments.v1.RefundFailed", refund, "")
    assert (
        failed is not None and failed.template == "refund_failed" and "of your payment could" in failed.body
    )
    assert for_refund("interpay.payments.v1.RefundCreated", refund, "order 7") is None
    # The payment's own refund events are no second notification of the same refund.
    payment = payments_pb.Payment(refunded_amount=refund.amount, captured_amount=refund.amount)
    assert for_payment("interpay.payments.v1.PaymentPartiallyRefunded", payment) is None
    assert for_payment("interpay.payments.v1.PaymentRefunded", payment) is None


def test_a_payout_is_told_when_it_completes_or_fails_with_the_account_ending_only() -> None:
    from interpay.transfers.v1 import transfers_service_pb2 as transfers_pb

    from services.notifications.domain.templates import for_payout

    iban = transfers_pb.ExternalAccount(holder_name="Ada", iban="DE****************3000", country_code="DE")
    payout = transfers_pb.Payout(destination=iban, amount=Money(amount_minor=4_000, currency="EUR"))
    done = for_payout("interpay.transfers.v1.PayoutCompleted", payout)
    assert done is not None and done.template == "payout_completed"
    assert done.body == "40.00 EUR was paid out to the account ending 3000."
    domestic = transfers_pb.ExternalAccount(
        holder_name="Ada",
        domestic_account=transfers_pb.DomesticAccount(
            account_number="******7788", routing_number="021000021"
        ),
        country_code="US",
    )
    payout.destination.CopyFrom(domestic)
    payout.failure_reason = "AC04"
    failed = for_payout("interpay.transfers.v1.PayoutFailed", payout)
    assert failed is not None and failed.template == "payout_failed"
    assert "ending 7788 failed (AC04)" in failed.body and "stays in your wallet" in failed.body
    for quiet in ("PayoutCreated", "PayoutProcessing"):
        assert for_payout(f"interpay.transfers.v1.{quiet}", payout) is None
