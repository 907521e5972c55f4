"""What a check needs to know beyond the transaction itself, and how it asks for it.

The counters (sliding windows kept in Redis) are described here abstractly: a check
computes one `CounterPlan` from the enabled rules and the transaction, listing the series
it appends to and the questions it asks; the Redis adapter runs the whole plan in one
round trip and answers each `Read`. Evaluating a rule then looks its answers up by the
same `Read`, so the plan and the rules cannot disagree about what was asked.

Series:
- velocity: every checked transaction of one subject (a user, card, device, IP address
  or e-mail address), declined ones included, since attempts are what card testing and
  account takeover look like; kept as long as the longest velocity window on it.
- device: the distinct users seen on one device, with when each was last seen.
- history: the user's transactions that were not declined (amount and currency), for the
  pattern rule and the KYC daily total; kept at least 30 days, so a rule created later
  has a history to judge by.
- geo: the user's located transactions that were not declined, for impossible travel.

Two kinds of evidence come from elsewhere: the user's risk profile (KYC level, country of
residence) from the users service, asked only when a rule needs it (`needs_profile`), and
when the user last used the transaction's device, from the recorded checks in Postgres
(`needs_device_history`): durable, so a Redis outage or flush never makes every device
look new.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from services.fraud.domain.model import (
    BASIS_POINTS,
    DeviceParams,
    FraudRule,
    ImpossibleTravelParams,
    KycLimitParams,
    LocationParams,
    PatternParams,
    Transaction,
    VelocityParams,
    VelocitySubject,
)

DAY_MS = 86_400_000
HISTORY_BASELINE_MS = 30 * DAY_MS
# The most members one series keeps (its newest); a limit beyond these is never reached.
VELOCITY_CAP = 10_000
DEVICE_CAP = 2_000
HISTORY_CAP = 5_000
GEO_CAP = 100


# Series, Write and Read are named tuples rather than frozen dataclasses: a check builds and
# hashes dozens of them (planning, then each rule looking its answers up), and a tuple is
# several times cheaper at both.
class Series(NamedTuple):
    kind: str  # "velocity", "device", "history", "geo"
    subject: str  # what the value identifies: a VelocitySubject, or "USER"/"DEVICE"
    value: str


class Write(NamedTuple):
    """Append `member` at the transaction's time; keep `retention_ms` and `cap` members.
    With `keep_latest`, an existing member only moves forward in time."""

    series: Series
    member: str
    retention_ms: int
    cap: int
    keep_latest: bool = False


class Read(NamedTuple):
    """One question about a series, over the window (t - window_ms, t]:
    - count: how many members;
    - sum: the total amount of the members in `currency`;
    - stats: (count, mean, standard deviation) of the amounts in `currency`, `exclude`
      left out;
    - last: the newest member other than `exclude`, with its time, or None."""

    op: str
    series: Series
    window_ms: int
    currency: str = ""
    exclude: str = ""


@dataclass(frozen=True)
class CounterPlan:
    at_ms: int
    writes: tuple[Write, ...]
    reads: tuple[Read, ...]
    # Taken back out of the history and geo series when the check declines.
    forget_on_decline: tuple[tuple[Series, str], ...]


Observations = Mapping[Read, object]


@dataclass(frozen=True)
class DeviceHistory:
    """When the paying user last used the transaction's device, by the `occur_time` of
    their latest recorded check with it that was not declined; None: never."""

    last_seen_ms: int | None


@functools.lru_cache(maxsize=4096)  # asked twice per check (counters, blacklist); parsing is slow
def canonical_ip(address: str) -> str:
    return ipaddress.ip_address(address).compressed


def subject_value(subject: VelocitySubject, txn: Transaction) -> str | None:
    if subject is VelocitySubject.USER:
        return str(txn.user_id) if txn.user_id else None
    if subject is VelocitySubject.CARD_FINGERPRINT:
        return txn.card_fingerprint or None
    if subject is VelocitySubject.DEVICE:
        return txn.device_fingerprint or None
    if subject is VelocitySubject.IP_ADDRESS:
        return canonical_ip(txn.ip_address) if txn.ip_address else None
    # Never the address itself: Redis keys name a sha256 of it, as the check record does.
    return email_digest(txn.email) if txn.email else None


@functools.lru_cache(maxsize=4096)
def email_digest(email: str) -> str:
    return hashlib.sha256(email.lower().encode()).hexdigest()


def velocity_series(subject: VelocitySubject, value: str) -> Series:
    return Series("velocity", subject.value, value)


def device_series(txn: Transaction) -> Series | None:
    if not txn.device_fingerprint or txn.user_id is None:
        return None
    return Series("device", "DEVICE", txn.device_fingerprint)


def history_series(user_id: uuid.UUID) -> Series:
    return Series("history", "USER", str(user_id))


def geo_series(user_id: uuid.UUID) -> Series:
    return Series("geo", "USER", str(user_id))


def amount_member(txn: Transaction) -> str:
    return f"{txn.reference}|{txn.amount.currency}|{txn.amount.amount_minor}"


def geo_member(txn: Transaction) -> str:
    return f"{txn.reference}|{txn.latitude!r}|{txn.longitude!r}"


def parse_geo_member(member: str) -> tuple[float, float]:
    _, latitude, longitude = member.rsplit("|", 2)
    return float(latitude), float(longitude)


def velocity_reads(p: VelocityParams, txn: Transaction) -> tuple[Read | None, Read | None]:
    """The count and sum reads a velocity rule asks for (None where it has no such limit,
    or the transaction has no such subject)."""
    value = subject_value(p.subject, txn)
    if value is None:
        return None, None
    series = velocity_series(p.subject, value)
    count = Read("count", series, p.window_ms) if p.max_count > 0 else None
    total = Read("sum", series, p.window_ms, p.max_amount.currency) if p.max_amount else None
    return count, total


def device_read(p: DeviceParams, txn: Transaction) -> Read | None:
    """The distinct-user count a device rule asks for (None without a limit on it, or
    without a device and a user)."""
    series = device_series(txn)
    return Read("count", series, p.window_ms) if series and p.max_users_per_device > 0 else None


def needs_profile(rules: Iterable[FraudRule], txn: Transaction) -> bool:
    """Whether a rule needs the user's risk profile for this transaction: a KYC limit, or a
    country mismatch rule when the transaction has a country."""
    if txn.user_id is None:
        return False
    for rule in rules:
        p = rule.params
        if isinstance(p, KycLimitParams):
            return True
        if isinstance(p, LocationParams) and p.fire_on_profile_country_mismatch and txn.country_code:
            return True
    return False


def needs_device_history(rules: Iterable[FraudRule], txn: Transaction) -> bool:
    """Whether a new-device rule needs to know when the user last used this device."""
    if txn.user_id is None or not txn.device_fingerprint:
        return False
    return any(isinstance(r.params, DeviceParams) and r.params.fire_on_new_device_for_user for r in rules)


def travel_read(rules: Iterable[FraudRule], txn: Transaction) -> Read | None:
    lookbacks = [r.params.lookback_ms for r in rules if isinstance(r.params, ImpossibleTravelParams)]
    if not lookbacks or txn.user_id is None or not txn.located:
        return None
    return Read("last", geo_series(txn.user_id), max(lookbacks), exclude=geo_member(txn))


def pattern_read(p: PatternParams, txn: Transaction) -> Read | None:
    if txn.user_id is None:
        return None
    return Read("stats", history_series(txn.user_id), p.lookback_ms, txn.amount.currency, amount_member(txn))


def daily_total_read(txn: Transaction) -> Read | None:
    if txn.user_id is None:
        return None
    return Read("sum", history_series(txn.user_id), DAY_MS, txn.amount.currency)


def plan_counters(rules: Iterable[FraudRule], txn: Transaction, at_ms: int) -> CounterPlan:
    rules = list(rules)
    reads: dict[Read, None] = {}  # ordered, without duplicates
    velocity_retention: dict[Series, int] = {}
    device_retention = 0
    history_retention = HISTORY_BASELINE_MS
    for rule in rules:
        p = rule.params
        if isinstance(p, VelocityParams):
            count, total = velocity_reads(p, txn)
            for read in (count, total):
                if read is not None:
                    reads[read] = None
                    velocity_retention[read.series] = max(velocity_retention.get(read.series, 0), p.window_ms)
        elif isinstance(p, DeviceParams):
            if (read := device_read(p, txn)) is not None:
                reads[read] = None
                device_retention = max(device_retention, p.window_ms)
        elif isinstance(p, PatternParams):
            history_retention = max(history_retention, p.lookback_ms)
            if (read := pattern_read(p, txn)) is not None:
                reads[read] = None
        elif isinstance(p, KycLimitParams) and any(limit.max_daily for limit in p.limits):
            if (read := daily_total_read(txn)) is not None:
                reads[read] = None
    travel = travel_read(rules, txn)
    if travel is not None:
        reads[travel] = None

    velocity_member = amount_member(txn)
    writes = [Write(s, velocity_member, ret, VELOCITY_CAP) for s, ret in velocity_retention.items()]
    forget: list[tuple[Series, str]] = []
    if device_retention and (series := device_series(txn)) is not None:
        writes.append(Write(series, str(txn.user_id), device_retention, DEVICE_CAP, keep_latest=True))
    if txn.user_id is not None:
        history = history_series(txn.user_id)
        writes.append(Write(history, amount_member(txn), history_retention, HISTORY_CAP))
        forget.append((history, amount_member(txn)))
        if txn.located:
            geo_retention = max([HISTORY_BASELINE_MS] + ([travel.window_ms] if travel else []))
            geo = geo_series(txn.user_id)
            writes.append(Write(geo, geo_member(txn), geo_retention, GEO_CAP))
            forget.append((geo, geo_member(txn)))
    return CounterPlan(at_ms, tuple(writes), tuple(reads), tuple(forget))


def escalating_confidence(observed: float, limit: float) -> int:
    """Half confidence for a limit just exceeded, growing linearly to full confidence at
    twice the limit."""
    if limit <= 0:
        return BASIS_POINTS
    excess = min(1.0, (observed - limit) / limit)
    return BASIS_POINTS // 2 + int(BASIS_POINTS // 2 * excess)
