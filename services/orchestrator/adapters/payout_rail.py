"""The payout rail adapter: sends money from payout clearing to a bank account outside
InterPay, and tells what became of a payout sent earlier.

A real rail (SEPA credit transfer, ACH, Faster Payments) is idempotent on the sender's
reference and can be asked what it did with one. The payout saga relies on exactly that:
before sending, it asks the rail whether a payout with its reference already exists, and
when a send goes unanswered it does not guess — it asks again later, by reference, and
decides only on what the rail says. So a payout is never sent twice under two references
and never given up while the rail may still pay it.

Until a real rail is connected, `SimulatedPayoutRail` answers like one, driven by
documented test accounts (IBAN, or domestic account number); any other account is paid
at once:

| account (IBAN / domestic number)        | behaviour                                          |
|-----------------------------------------|----------------------------------------------------|
| DE89370400440532013000 / 000123456789   | paid at once (SETTLED), like every unlisted account |
| DE62370400440532013001 / 000000000001   | rejected at once: AC04, the account is closed      |
| DE35370400440532013002 / 000000000002   | late: the send times out, but the rail took it; a  |
|                                         | lookup shows it ACCEPTED, and SETTLED from         |
|                                         | `settle_after_seconds` after the payout started    |
| DE08370400440532013003 / 000000000003   | late, then rejected: the send times out; a lookup  |
|                                         | shows it REJECTED with AC06, the account is blocked |

The rail's outcome depends only on the account and the time the payout started (which
the saga sends, the same on every attempt), so a repeated send or lookup — a retry, a
saga resumed by another orchestrator replica, a restarted process — gets the same answer
and the same rail reference. The simulator remembers which references it received (a
bounded in-memory table); one it has forgotten is simply sent again under the same
reference, which a rail idempotent on references treats as the same payout.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from interpay.common.v1.money_pb2 import Money
from interpay.transfers.v1.transfers_service_pb2 import ExternalAccount

_NAMESPACE = uuid.UUID("6c1f0b7a-3d2e-4f59-8a61-2e9d4b7c0a13")


class RailStatus(enum.StrEnum):
    ACCEPTED = "ACCEPTED"  # the rail took the payout and will pay it; final answer pending
    SETTLED = "SETTLED"  # the external account was credited
    REJECTED = "REJECTED"  # the rail will not pay it; nothing left InterPay


@dataclass(frozen=True)
class RailPayout:
    """What the rail knows about one payout."""

    rail_reference: str
    status: RailStatus
    return_code: str = ""  # the rail's reason code (ISO 20022) when REJECTED
    message: str = ""


class RailTimeout(Exception):
    """The rail did not answer in time: the payout may or may not exist there."""


@dataclass(frozen=True)
class _Behaviour:
    late: bool  # the send times out; only a lookup tells the outcome
    return_code: str = ""  # rejected with this code; empty means paid
    message: str = ""


PAID = _Behaviour(late=False)
TEST_ACCOUNTS: dict[str, _Behaviour] = {
    "DE62370400440532013001": _Behaviour(False, "AC04", "the beneficiary's account is closed"),
    "000000000001": _Behaviour(False, "AC04", "the beneficiary's account is closed"),
    "DE35370400440532013002": _Behaviour(late=True),
    "000000000002": _Behaviour(late=True),
    "DE08370400440532013003": _Behaviour(True, "AC06", "the beneficiary's account is blocked"),
    "000000000003": _Behaviour(True, "AC06", "the beneficiary's account is blocked"),
}


def account_key(account: ExternalAccount) -> str:
    return account.iban or account.domestic_account.account_number


@dataclass(frozen=True)
class _Received:
    behaviour: _Behaviour
    requested_at: datetime


class SimulatedPayoutRail:
    """A payout rail that answers from the test-account table above."""

    def __init__(
        self, timeout_seconds: float = 2.0, settle_after_seconds: float = 3.0, memory: int = 100_000
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.settle_after = timedelta(seconds=settle_after_seconds)
        self.memory = memory
        self._received: OrderedDict[str, _Received] = OrderedDict()

    @staticmethod
    def _rail_reference(reference: str) -> str:
        return f"sim_payout_{uuid.uuid5(_NAMESPACE, reference).hex}"

    def _answer(self, reference: str, received: _Received) -> RailPayout:
        rail_reference = self._rail_reference(reference)
        behaviour = received.behaviour
        if behaviour.return_code:
            return RailPayout(rail_reference, RailStatus.REJECTED, behaviour.return_code, behaviour.message)
        if behaviour.late and datetime.now(UTC) < received.requested_at + self.settle_after:
            return RailPayout(rail_reference, RailStatus.ACCEPTED)
        return RailPayout(rail_reference, RailStatus.SETTLED)

    async def send(
        self, reference: str, destination: ExternalAccount, amount: Money, requested_at: datetime
    ) -> RailPayout:
        """Sends the payout (idempotent on `reference`); raises RailTimeout when the
        answer does not come in time, although the rail may have taken the payout."""
        received = self._received.get(reference)
        if received is None:
            received = _Received(TEST_ACCOUNTS.get(account_key(destination), PAID), requested_at)
            self._received[reference] = received
            while len(self._received) > self.memory:
                self._received.popitem(last=False)
        if received.behaviour.late:
            await asyncio.sleep(self.timeout_seconds)
            raise RailTimeout(f"the payout rail did not answer within {self.timeout_seconds:g} s")
        return self._answer(reference, received)

    async def find(self, reference: str) -> RailPayout | None:
        """What the rail did with the payout sent under `reference`; None if it never
        received one."""
        received = self._received.get(reference)
        return None if received is None else self._answer(reference, received)
