"""The wallet's domain events, written to its outbox (services/framework/outbox.py).

The aggregate is the wallet: every committed change of a wallet, that is every new
`version` of its row, is exactly one event keyed by the wallet id, with
`aggregate_version` = the wallet's version after the change. A consumer therefore sees
a wallet's versions 1, 2, 3, ... in order on topic `interpay.events.v1.wallet` and can
tell a gap from a duplicate.

| event_type (interpay.wallet.v1.…) | when | payload |
|---|---|---|
| WalletCreated | a wallet is opened (version 1) | Wallet |
| WalletFrozen, WalletUnfrozen, WalletClosed | its state changes | Wallet |
| FundsCredited, FundsDebited | a ledger entry: funding, transfer, a capture's payee | WalletTransaction |
| HoldPlaced, HoldReleased, HoldExpired | a hold moves funds between available and pending | Hold |
| HoldCaptured | the payer's side of a capture (debit and release of the rest) | Hold |

The payloads are the contract's resource messages: the wallet contract declares no
`*Event` messages yet, so `event_type` names what happened while the payload's type is
the resource it happened to (see the README's events section).
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from services.framework.outbox import Event, Outbox
from services.wallet.adapters.messages import entry_pb, hold_pb, wallet_pb
from services.wallet.domain.batch import Accepted
from services.wallet.domain.model import Hold, HoldState, TransferOrder, Wallet, WalletState

OUTBOX = Outbox("wallet")
AGGREGATE = "wallet"
_PREFIX = "interpay.wallet.v1."

STATE_EVENTS = {
    WalletState.FROZEN: "WalletFrozen",
    WalletState.ACTIVE: "WalletUnfrozen",
    WalletState.CLOSED: "WalletClosed",
}
HOLD_EVENTS = {
    HoldState.ACTIVE: "HoldPlaced",
    HoldState.RELEASED: "HoldReleased",
    HoldState.EXPIRED: "HoldExpired",
    HoldState.CAPTURED: "HoldCaptured",
}


def wallet_event(wallet: Wallet, what: str) -> Event:
    return Event(AGGREGATE, str(wallet.wallet_id), wallet.version, wallet_pb(wallet), _PREFIX + what)


def hold_event(hold: Hold, wallet_version: int) -> Event:
    return Event(
        AGGREGATE, str(hold.wallet_id), wallet_version, hold_pb(hold), _PREFIX + HOLD_EVENTS[hold.state]
    )


def moved(wallet: Wallet, amount: int, available_delta: int, pending_delta: int, at: datetime) -> Wallet:
    """The wallet as record_movement will leave it; computed under the wallet's row lock,
    so it is exactly what the statement writes (the repository checks it)."""
    return replace(
        wallet,
        balance=wallet.balance + amount,
        available=wallet.available + available_delta,
        pending=wallet.pending + pending_delta,
        version=wallet.version + 1,
        updated_at=at,
    )


def entry_event(
    after: Wallet,
    transaction_id: uuid.UUID,
    order: TransferOrder,
    amount: int,
    counterparty: uuid.UUID,
    at: datetime,
) -> Event:
    entry = entry_pb(
        transaction_id=transaction_id,
        wallet_id=after.wallet_id,
        amount=amount,
        balance_after=after.balance,
        currency=order.currency,
        kind=order.kind,
        reference=order.reference,
        counterparty_wallet_id=counterparty,
        description=order.description,
        created_at=at,
    )
    what = "FundsCredited" if amount > 0 else "FundsDebited"
    return Event(AGGREGATE, str(after.wallet_id), after.version, entry, _PREFIX + what)


def batch_event_columns(
    movements: Sequence[Accepted],
    locked: Mapping[uuid.UUID, Wallet],
    contexts: Sequence[contextvars.Context],
    at: datetime,
) -> tuple[list[uuid.UUID], list[bytes]]:
    """The outbox rows of a batch's movements (LedgerRepository.record_movements), as event
    ids and serialised envelopes: per movement, the source's entry event then the
    destination's, each with the version its wallet has right after that movement, in the
    batch's order. Each envelope is made in its order's caller's context
    (`contexts[position]`, when given), so it carries that request's trace.

    Raises unless every wallet's events carry exactly the versions after the one locked,
    one by one: an event stream with a gap or a repeat must never be written."""
    ids: list[uuid.UUID] = []
    envelopes: list[bytes] = []
    versions = {wallet_id: wallet.version for wallet_id, wallet in locked.items()}
    for m in movements:
        order = m.order
        legs = (
            (m.source, -order.amount, order.destination_wallet_id),
            (m.destination, order.amount, order.source_wallet_id),
        )
        context = contexts[m.position] if m.position < len(contexts) else None
        for after, amount, counterparty in legs:
            if after.version != versions[after.wallet_id] + 1:
                raise RuntimeError(f"batch events skip a version of wallet {after.wallet_id}")
            versions[after.wallet_id] = after.version
            event = entry_event(after, m.transaction_id, order, amount, counterparty, at)
            envelope = context.run(OUTBOX.envelope, event, at) if context else OUTBOX.envelope(event, at)
            ids.append(event.event_id)
            envelopes.append(envelope.SerializeToString())
    return ids, envelopes
