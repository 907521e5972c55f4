"""The wallet's rules for moving money, as pure logic."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.wallet.domain.model import (
    CurrencyMismatch,
    InsufficientFunds,
    OwnerType,
    SystemAccount,
    TransactionKind,
    TransferOrder,
    Wallet,
    WalletNotActive,
    WalletState,
    check_transfer,
    reference_mismatches,
    system_wallet_id,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def wallet(
    available: int = 1000,
    *,
    state: WalletState = WalletState.ACTIVE,
    currency: str = "EUR",
    owner_type: OwnerType = OwnerType.USER,
) -> Wallet:
    return Wallet(uuid.uuid4(), owner_type, "owner", currency, available, available, 0, state, 1, NOW, NOW)


def order(source: Wallet, destination: Wallet, amount: int = 100, currency: str = "EUR") -> TransferOrder:
    return TransferOrder(
        source.wallet_id, destination.wallet_id, amount, currency, "ref", TransactionKind.TRANSFER
    )


def test_a_transfer_within_available_funds_passes() -> None:
    a, b = wallet(100), wallet(0)
    check_transfer(order(a, b, 100), a, b)


def test_spending_one_unit_more_than_available_is_insufficient_funds() -> None:
    a, b = wallet(99), wallet(0)
    with pytest.raises(InsufficientFunds) as err:
        check_transfer(order(a, b, 100), a, b)
    assert err.value.metadata["available_minor"] == "99"
    assert err.value.reason == "INSUFFICIENT_FUNDS"


def test_a_system_account_may_go_negative() -> None:
    funding = wallet(0, owner_type=OwnerType.SYSTEM)
    b = wallet(0)
    check_transfer(order(funding, b, 10_000), funding, b)


@pytest.mark.parametrize("side", ["source", "destination"])
def test_cross_currency_is_refused(side: str) -> None:
    a, b = wallet(1000), wallet(1000)
    if side == "source":
        a = replace(a, currency="USD")
    else:
        b = replace(b, currency="USD")
    with pytest.raises(CurrencyMismatch):
        check_transfer(order(a, b), a, b)


def test_a_frozen_wallet_cannot_send_but_can_receive() -> None:
    frozen, other = wallet(1000, state=WalletState.FROZEN), wallet(1000)
    with pytest.raises(WalletNotActive):
        check_transfer(order(frozen, other), frozen, other)
    check_transfer(order(other, frozen), other, frozen)


def test_a_closed_wallet_cannot_receive() -> None:
    closed, other = wallet(0, state=WalletState.CLOSED), wallet(1000)
    with pytest.raises(WalletNotActive):
        check_transfer(order(other, closed), other, closed)


def test_reference_mismatches_name_each_differing_field() -> None:
    a, b = wallet(), wallet()
    first = order(a, b, 100)
    assert reference_mismatches(first, first) == []
    assert reference_mismatches(replace(first, amount=101), first) == ["amount"]
    swapped = replace(first, source_wallet_id=b.wallet_id, destination_wallet_id=a.wallet_id)
    assert reference_mismatches(swapped, first) == ["source_wallet_id", "destination_wallet_id"]


def test_system_wallet_ids_are_stable_per_account_and_currency() -> None:
    assert system_wallet_id(SystemAccount.FUNDING, "EUR") == system_wallet_id(SystemAccount.FUNDING, "EUR")
    assert system_wallet_id(SystemAccount.FUNDING, "EUR") != system_wallet_id(SystemAccount.FUNDING, "USD")
    assert system_wallet_id(SystemAccount.FUNDING, "EUR") != system_wallet_id(SystemAccount.FEES, "EUR")
