"""The transfers service's events, pure parts: what of a payout's account an event shows."""

from __future__ import annotations

import pytest
from interpay.transfers.v1 import transfers_service_pb2 as pb

from services.transfers.adapters.events import masked_account
from services.transfers.domain.model import masked


@pytest.mark.parametrize(
    ("value", "keep_start", "shown"),
    [
        ("DE89370400440532013000", 2, "DE****************3000"),
        ("000123456789", 0, "********6789"),
        ("1234", 0, "****"),  # too short to keep anything
        ("AB12345", 2, "AB*2345"),
        ("", 0, ""),
    ],
)
def test_masked_keeps_only_the_ends_and_the_length(value: str, keep_start: int, shown: str) -> None:
    assert masked(value, keep_start=keep_start) == shown


def test_an_accounts_number_is_masked_and_the_rest_kept() -> None:
    iban = pb.ExternalAccount(holder_name="Ada Lovelace", iban="DE89370400440532013000", country_code="DE")
    assert masked_account(iban) == pb.ExternalAccount(
        holder_name="Ada Lovelace", iban="DE****************3000", country_code="DE"
    )
    assert iban.iban == "DE89370400440532013000"  # the original is untouched
    domestic = pb.ExternalAccount(
        holder_name="Ada Lovelace",
        domestic_account=pb.DomesticAccount(account_number="000123456789", routing_number="021000021"),
        country_code="US",
    )
    shown = masked_account(domestic)
    assert shown.domestic_account == pb.DomesticAccount(
        account_number="********6789", routing_number="021000021"
    )
    assert (shown.holder_name, shown.country_code) == ("Ada Lovelace", "US")
