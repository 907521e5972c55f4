"""The wallet's domain values as its contract's protobuf messages, for the servicer's
responses and for the payloads of its events alike."""

from __future__ import annotations

import uuid
from datetime import datetime

from interpay.common.v1.money_pb2 import Money
from interpay.wallet.v1 import wallet_service_pb2 as pb

from services.framework.proto import timestamp
from services.wallet.domain.model import Hold, OwnerType, TransactionKind, Wallet

OWNER_TYPES = {
    pb.OWNER_TYPE_USER: OwnerType.USER,
    pb.OWNER_TYPE_MERCHANT: OwnerType.MERCHANT,
    pb.OWNER_TYPE_SYSTEM: OwnerType.SYSTEM,
}
OWNER_TYPES_PB = {v: k for k, v in OWNER_TYPES.items()}
KINDS_PB = {kind: pb.TransactionKind.Value(f"TRANSACTION_KIND_{kind.value}") for kind in TransactionKind}
KINDS = {v: k for k, v in KINDS_PB.items()}


def wallet_pb(w: Wallet) -> pb.Wallet:
    return pb.Wallet(
        wallet_id=str(w.wallet_id),
        owner_type=OWNER_TYPES_PB[w.owner_type],
        owner_id=w.owner_id,
        currency=w.currency,
        balance=Money(amount_minor=w.balance, currency=w.currency),
        available=Money(amount_minor=w.available, currency=w.currency),
        pending=Money(amount_minor=w.pending, currency=w.currency),
        state=pb.Wallet.State.Value(f"STATE_{w.state.value}"),
        version=w.version,
        create_time=timestamp(w.created_at),
        update_time=timestamp(w.updated_at),
    )


def hold_pb(h: Hold) -> pb.Hold:
    return pb.Hold(
        hold_id=str(h.hold_id),
        wallet_id=str(h.wallet_id),
        amount=Money(amount_minor=h.amount, currency=h.currency),
        captured_amount=Money(amount_minor=h.captured_amount, currency=h.currency),
        reference=h.reference,
        state=pb.Hold.State.Value(f"STATE_{h.state.value}"),
        expire_time=timestamp(h.expires_at),
        create_time=timestamp(h.created_at),
    )


def entry_pb(
    *,
    transaction_id: uuid.UUID | str,
    wallet_id: uuid.UUID | str,
    amount: int,
    balance_after: int,
    currency: str,
    kind: TransactionKind,
    reference: str,
    counterparty_wallet_id: uuid.UUID | str,
    description: str,
    created_at: datetime,
) -> pb.WalletTransaction:
    return pb.WalletTransaction(
        transaction_id=str(transaction_id),
        wallet_id=str(wallet_id),
        amount=Money(amount_minor=amount, currency=currency),
        balance_after=Money(amount_minor=balance_after, currency=currency),
        kind=KINDS_PB[kind],
        reference=reference,
        counterparty_wallet_id=str(counterparty_wallet_id),
        description=description,
        create_time=timestamp(created_at),
    )
