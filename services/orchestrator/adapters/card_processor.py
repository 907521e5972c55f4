"""The card processor adapter: the one place a card number is used after the vault.

The payment saga detokenises the card (the vault admits only the orchestrator for that),
hands number, expiry and CVV to `CardProcessor.authorize`, and afterwards knows the card
only by the processor's authorisation reference. Nothing here logs or returns the number.

Until a real acquirer is connected, `SimulatedProcessor` answers like one, driven by
documented test cards (any other Luhn-valid card is approved):

| card number         | brand      | outcome                                               |
|---------------------|------------|-------------------------------------------------------|
| 4242 4242 4242 4242 | Visa       | approved                                              |
| 5555 5555 5555 4444 | Mastercard | approved                                              |
| 3782 822463 10005   | Amex       | approved                                              |
| 4000 0000 0000 9995 | Visa       | declined: insufficient funds                          |
| 4000 0000 0000 9979 | Visa       | declined: card reported stolen                        |
| 4000 0000 0000 0069 | Visa       | declined: the issuer says the card has expired        |
| 4000 0000 0000 0127 | Visa       | declined: incorrect CVV (when a CVV is given)         |
| 4000 0000 0000 0119 | Visa       | no answer: the authorisation times out                |

Every call is idempotent on its reference, as a real processor's idempotency keys are:
the simulator derives its references from the caller's, so a repeated step (a retry, or
a saga recovered by another orchestrator) gets the same answer and charges nobody twice.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from interpay.common.v1.money_pb2 import Money

_NAMESPACE = uuid.UUID("2f6d4c1e-8a55-4c6b-9a3e-5b0e7c2d9f10")


class ProcessorDeclined(Exception):
    """The issuer said no. `code` is the payment failure it maps to."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProcessorTimeout(Exception):
    """The processor did not answer in time: the authorisation's outcome is unknown."""


@dataclass(frozen=True)
class CardDetails:
    pan: str
    expiry_month: int
    expiry_year: int
    cvv: str  # empty when the saga was recovered after a crash: the CVV was never stored


DECLINES = {
    "4000000000009995": ("CARD_DECLINED", "the issuer declined the card: insufficient funds"),
    "4000000000009979": ("CARD_DECLINED", "the issuer declined the card: reported stolen"),
    "4000000000000069": ("CARD_EXPIRED", "the issuer declined the card: expired"),
}
INCORRECT_CVV = "4000000000000127"
TIMES_OUT = "4000000000000119"


class SimulatedProcessor:
    """A card processor that answers from the test-card table above."""

    def __init__(self, timeout_seconds: float = 2.0) -> None:
        self.timeout_seconds = timeout_seconds

    @staticmethod
    def _reference(kind: str, reference: str) -> str:
        return f"sim_{kind}_{uuid.uuid5(_NAMESPACE, f'{kind}/{reference}').hex}"

    async def authorize(self, reference: str, card: CardDetails, amount: Money) -> str:
        """Authorises `amount` on the card; returns the authorisation reference."""
        if card.pan == TIMES_OUT:
            await asyncio.sleep(self.timeout_seconds)
            raise ProcessorTimeout(f"the processor did not answer within {self.timeout_seconds:g} s")
        if card.pan in DECLINES:
            raise ProcessorDeclined(*DECLINES[card.pan])
        if card.pan == INCORRECT_CVV and card.cvv:
            raise ProcessorDeclined("INCORRECT_CVV", "the issuer declined the card: incorrect CVV")
        return self._reference("auth", reference)

    async def capture(self, authorization: str, amount: Money, reference: str) -> str:
        return self._reference("capture", f"{authorization}/{reference}")

    async def void(self, *, authorization: str = "", request_reference: str = "") -> None:
        """Cancels an authorisation, named by its reference or, when its answer never
        arrived, by the reference of the request that asked for it. Voiding one that never
        succeeded, or one already voided, is harmless."""

    async def refund(self, authorization: str, amount: Money, reference: str) -> str:
        return self._reference("refund", f"{authorization}/{reference}")
