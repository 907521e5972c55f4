"""Cards: what makes a card number acceptable, its network, its expiry, and the two
shapes a card takes here: the secret (`CardSecret`, only ever in memory) and what may
leave the vault (`Card`).

Pure: no database, no gRPC, no cryptography. The refusals are the framework's error
types, and none of them carries the card number, or any part of it, in its message or
metadata: error messages end up in logs and in the caller's logs.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from services.framework.errors import FieldViolation, InvalidArgument, NotFound

MIN_PAN_DIGITS = 13
MAX_PAN_DIGITS = 19


class CardBrand(enum.StrEnum):
    VISA = "VISA"
    MASTERCARD = "MASTERCARD"
    AMEX = "AMEX"
    DISCOVER = "DISCOVER"
    JCB = "JCB"
    DINERS_CLUB = "DINERS_CLUB"
    UNIONPAY = "UNIONPAY"
    OTHER = "OTHER"


_ANY_LENGTH = tuple(range(16, MAX_PAN_DIGITS + 1))
_ALL_LENGTHS = tuple(range(MIN_PAN_DIGITS, MAX_PAN_DIGITS + 1))


@dataclass(frozen=True)
class IinRange:
    """Numbers whose leading digits lie in [first, last] (compared as equal-length
    prefixes) belong to `brand` and have one of its `lengths`."""

    first: str
    last: str
    brand: CardBrand
    lengths: tuple[int, ...]

    def matches(self, pan: str) -> bool:
        return self.first <= pan[: len(self.first)] <= self.last


# Most specific (longest) prefixes first: the first match wins. The networks the contract
# does not name (Mir, Maestro, RuPay, Verve, UATP) are OTHER, and listed last so that the
# named networks inside their ranges win. A number in no range at all (leading 0, 7 or 9,
# or an unassigned range such as 31 or 2721) belongs to no card network and is refused.
IIN_RANGES: tuple[IinRange, ...] = (
    IinRange("2221", "2720", CardBrand.MASTERCARD, (16,)),  # the 2-series, since 2017
    IinRange("3095", "3095", CardBrand.DINERS_CLUB, (14, *_ANY_LENGTH)),
    IinRange("3528", "3589", CardBrand.JCB, _ANY_LENGTH),
    IinRange("6011", "6011", CardBrand.DISCOVER, _ANY_LENGTH),
    IinRange("8171", "8171", CardBrand.UNIONPAY, _ANY_LENGTH),
    IinRange("300", "305", CardBrand.DINERS_CLUB, (14, *_ANY_LENGTH)),
    IinRange("644", "649", CardBrand.DISCOVER, _ANY_LENGTH),
    IinRange("34", "34", CardBrand.AMEX, (15,)),
    IinRange("37", "37", CardBrand.AMEX, (15,)),
    IinRange("36", "36", CardBrand.DINERS_CLUB, (14, *_ANY_LENGTH)),
    IinRange("38", "39", CardBrand.DINERS_CLUB, _ANY_LENGTH),
    IinRange("51", "55", CardBrand.MASTERCARD, (16,)),
    # UnionPay's 62 includes 622126-622925, which Discover's network also accepts
    # abroad; the card is still a UnionPay card.
    IinRange("62", "62", CardBrand.UNIONPAY, _ANY_LENGTH),
    IinRange("65", "65", CardBrand.DISCOVER, _ANY_LENGTH),
    IinRange("4", "4", CardBrand.VISA, (13, 16, 19)),
    IinRange("2200", "2204", CardBrand.OTHER, _ANY_LENGTH),  # Mir
    IinRange("50", "50", CardBrand.OTHER, _ALL_LENGTHS),  # Maestro, Verve
    IinRange("56", "69", CardBrand.OTHER, _ALL_LENGTHS),  # Maestro, RuPay and others
    IinRange("81", "82", CardBrand.OTHER, (16,)),  # RuPay
    IinRange("1", "1", CardBrand.OTHER, (15,)),  # UATP
)


class InvalidCardNumber(InvalidArgument):
    default_reason = "INVALID_CARD_NUMBER"

    def __init__(self, why: str, **metadata: str) -> None:
        super().__init__(
            f"invalid card number: {why}",
            metadata=metadata,
            field_violations=[FieldViolation("pan", why)],
        )


class CardExpired(InvalidArgument):
    default_reason = "CARD_EXPIRED"


class CardNotFound(NotFound):
    default_reason = "CARD_NOT_FOUND"

    def __init__(self, token: uuid.UUID | str) -> None:
        super().__init__(f"card {token} does not exist", metadata={"token": str(token)})


def luhn_valid(pan: str) -> bool:
    """The Luhn (mod 10) check: double every second digit from the right."""
    total = 0
    for position, char in enumerate(reversed(pan)):
        digit = ord(char) - 48
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def brand_of(pan: str) -> CardBrand:
    """The network, from the number's leading digits; checks the length the network
    issues and refuses a number no network issues. Expects 13-19 ASCII digits (the
    contract's pattern, enforced before this)."""
    if not (MIN_PAN_DIGITS <= len(pan) <= MAX_PAN_DIGITS and pan.isascii() and pan.isdigit()):
        raise InvalidCardNumber(f"a card number has {MIN_PAN_DIGITS} to {MAX_PAN_DIGITS} digits")
    for iin in IIN_RANGES:
        if iin.matches(pan):
            if len(pan) not in iin.lengths:
                raise InvalidCardNumber(
                    f"a {iin.brand.value} card number has {_lengths(iin.lengths)} digits, not {len(pan)}",
                    brand=iin.brand.value,
                    length=str(len(pan)),
                )
            return iin.brand
    raise InvalidCardNumber("its leading digits belong to no card network (unknown brand)")


def _lengths(lengths: Sequence[int]) -> str:
    runs: list[list[int]] = []
    for n in lengths:
        if runs and runs[-1][-1] == n - 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    parts = [str(r[0]) if len(r) == 1 else f"{r[0]} to {r[-1]}" for r in runs]
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"


def check_pan(pan: str) -> CardBrand:
    """A card number the vault accepts: digits, a known length for its network, and a
    valid Luhn check digit. Returns its brand."""
    brand = brand_of(pan)
    if not luhn_valid(pan):
        raise InvalidCardNumber("the check digit is wrong (Luhn check failed)")
    return brand


def check_not_expired(expiry_month: int, expiry_year: int, now: datetime) -> None:
    """A card is valid through the last day of its expiry month."""
    if (expiry_year, expiry_month) >= (now.year, now.month):
        return
    stale = "expiry_year" if expiry_year < now.year else "expiry_month"
    raise CardExpired(
        f"the card expired at the end of {expiry_month:02d}/{expiry_year}",
        metadata={"expiry_month": str(expiry_month), "expiry_year": str(expiry_year)},
        field_violations=[FieldViolation(stale, "the card has expired")],
    )


@dataclass(frozen=True)
class CardSecret:
    """What the vault encrypts. Its repr never shows the number or the name, so a stray
    log call or traceback cannot leak them."""

    pan: str = field(repr=False)
    expiry_month: int
    expiry_year: int
    cardholder_name: str = field(default="", repr=False)

    @property
    def last4(self) -> str:
        return self.pan[-4:]


@dataclass(frozen=True)
class Card:
    """What the vault reveals about a card: never its number."""

    token: uuid.UUID
    brand: CardBrand
    last4: str
    expiry_month: int
    expiry_year: int
    fingerprint: str
    created_at: datetime
