"""Judging a batch of transfer orders together, as if they had run one after another.

Pure: the service layer locks every wallet the orders name and reads which of their
references are already recorded; `plan_batch` then takes the orders in arrival order
against running balances and answers each one exactly as the one-transfer path would
have, had the orders reached it in that order:

- a wallet that does not exist: `WalletNotFound` (source first, as the single path);
- a reference already recorded, before the batch or by an earlier order of the batch:
  a replay of that transfer, or `ReferenceReused` naming the fields that differ;
- otherwise the rules of `check_transfer` against the wallets as the earlier orders of
  the batch left them (so a refused order changes nothing, and the next order of the
  same payer is judged on the balance it really has); accepted, it moves the money in
  the running balances and takes its reference.

The outcome of every order is its own: one refusal never touches another order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from services.framework.errors import FailedPrecondition, ServiceError
from services.wallet.domain.model import (
    ReferenceReused,
    TransferOrder,
    Wallet,
    WalletNotFound,
    check_transfer,
    reference_mismatches,
)


@dataclass(frozen=True)
class Accepted:
    """An order that moves money: its new ledger transaction and its two wallets as they
    are right after it (each one version further than before it)."""

    transaction_id: uuid.UUID
    order: TransferOrder
    source: Wallet
    destination: Wallet
    position: int  # the order's index in the batch


@dataclass(frozen=True)
class Replayed:
    """A retry of a transfer already recorded: its transaction, and the two wallets as they
    are at this point of the batch."""

    transaction_id: uuid.UUID
    source: Wallet
    destination: Wallet


Outcome = Accepted | Replayed | ServiceError


@dataclass(frozen=True)
class BatchPlan:
    outcomes: list[Outcome]  # one per order, in the orders' order
    accepted: list[Accepted]  # the movements to write, in order
    final: dict[uuid.UUID, Wallet]  # every wallet the batch changes, as after the batch

    @property
    def unchanged(self) -> bool:
        return not self.accepted


def _moved(wallet: Wallet, delta: int, at: datetime) -> Wallet:
    return replace(
        wallet,
        balance=wallet.balance + delta,
        available=wallet.available + delta,
        version=wallet.version + 1,
        updated_at=at,
    )


def plan_batch(
    orders: Sequence[TransferOrder],
    wallets: Mapping[uuid.UUID, Wallet],
    recorded: Mapping[str, tuple[uuid.UUID, TransferOrder]],
    at: datetime,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> BatchPlan:
    """Each order's outcome, judged in order against running balances (module docstring).

    `wallets` are the locked wallets (a missing id does not exist); `recorded` maps the
    references already in the ledger to their transaction and order; `at` is the
    transaction's time, which the wallets' `updated_at` will show."""
    running = dict(wallets)
    taken = dict(recorded)
    outcomes: list[Outcome] = []
    accepted: list[Accepted] = []
    changed: set[uuid.UUID] = set()
    for position, order in enumerate(orders):
        source = running.get(order.source_wallet_id)
        destination = running.get(order.destination_wallet_id)
        if source is None or destination is None:
            missing = order.source_wallet_id if source is None else order.destination_wallet_id
            outcomes.append(WalletNotFound(missing))
            continue
        first = taken.get(order.reference)
        if first is not None:
            transaction_id, first_order = first
            mismatched = reference_mismatches(order, first_order)
            if mismatched:
                outcomes.append(
                    ReferenceReused(
                        f"reference {order.reference!r} was already used for a different transfer "
                        f"(differs in {', '.join(mismatched)})",
                        metadata={"reference": order.reference, "mismatched_fields": ",".join(mismatched)},
                    )
                )
            else:
                outcomes.append(Replayed(transaction_id, source, destination))
            continue
        try:
            check_transfer(order, source, destination)
        except FailedPrecondition as refusal:
            outcomes.append(refusal)
            continue
        source = _moved(source, -order.amount, at)
        destination = _moved(destination, order.amount, at)
        running[source.wallet_id] = source
        running[destination.wallet_id] = destination
        changed.update((source.wallet_id, destination.wallet_id))
        movement = Accepted(new_id(), order, source, destination, position)
        taken[order.reference] = (movement.transaction_id, order)
        accepted.append(movement)
        outcomes.append(movement)
    return BatchPlan(outcomes, accepted, {wallet_id: running[wallet_id] for wallet_id in changed})
