"""Evaluating the enabled rules against one transaction, and turning what fired into a
score and a decision.

Pure: the counters' answers (`Observations`, None when Redis could not be asked), the
blacklist matches and the user's risk profile are handed in. A rule whose evidence is
missing is judged on what is left and marked degraded; it is listed among the fired rules
even when it contributes nothing, so the caller sees why the check is degraded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from services.fraud.domain.blacklist import Identifier, Match
from services.fraud.domain.evidence import (
    DeviceHistory,
    Observations,
    canonical_ip,
    daily_total_read,
    device_read,
    escalating_confidence,
    geo_series,
    parse_geo_member,
    pattern_read,
    velocity_reads,
)
from services.fraud.domain.model import (
    BASIS_POINTS,
    AmountParams,
    BlacklistParams,
    BlacklistType,
    Decision,
    DeviceParams,
    FiredRule,
    FraudRule,
    ImpossibleTravelParams,
    KycLimitParams,
    LocationParams,
    PatternParams,
    RiskProfile,
    Thresholds,
    Transaction,
    VelocityParams,
)

EARTH_RADIUS_KM = 6371.0


@dataclass(frozen=True)
class Outcome:
    """What one rule concluded: fired (confidence > 0) and/or degraded."""

    confidence: int
    reason: str
    degraded: bool = False


NOT_FIRED = Outcome(0, "")


@dataclass(frozen=True)
class Evidence:
    """Everything a check knows besides the transaction and the rules."""

    observations: Observations | None  # None: the counters were unreachable
    blacklist_matches: tuple[Match, ...]
    profile: RiskProfile | None
    profile_problem: str = ""  # why the profile is missing, when it should be there
    device_history: DeviceHistory | None = None  # None: not looked up (no rule needs it)


def identifiers(txn: Transaction) -> list[Identifier]:
    """The identifiers of a transaction the blacklist can list."""
    found = []
    if txn.user_id is not None:
        found.append(Identifier(BlacklistType.USER, str(txn.user_id), "user"))
    if txn.counterparty_user_id is not None:
        found.append(Identifier(BlacklistType.USER, str(txn.counterparty_user_id), "receiving user"))
    if txn.email_domain:
        found.append(Identifier(BlacklistType.EMAIL_DOMAIN, txn.email_domain, "e-mail domain"))
    if txn.device_fingerprint:
        found.append(Identifier(BlacklistType.DEVICE, txn.device_fingerprint, "device"))
    if txn.ip_address:
        ip = canonical_ip(txn.ip_address)
        found.append(Identifier(BlacklistType.IP, ip, "IP address"))
        found.append(Identifier(BlacklistType.IP_RANGE, ip, "IP address"))
    if txn.card_fingerprint:
        found.append(Identifier(BlacklistType.CARD_FINGERPRINT, txn.card_fingerprint.lower(), "card"))
    return found


def duration_words(ms: int) -> str:
    for unit_ms, unit in ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1000, "s")):
        if ms % unit_ms == 0:
            return f"{ms // unit_ms}{unit}"
    return f"{ms}ms"


def money_words(amount_minor: int, currency: str) -> str:
    return f"{amount_minor} {currency} (minor units)"


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def _counters_down(what: str) -> Outcome:
    return Outcome(0, f"{what} unreachable (Redis); the rule was not evaluated", degraded=True)


def velocity(p: VelocityParams, txn: Transaction, ev: Evidence) -> Outcome:
    count_read, sum_read = velocity_reads(p, txn)
    if count_read is None and sum_read is None:
        return NOT_FIRED  # the transaction has no such subject
    if ev.observations is None:
        return _counters_down("velocity counters")
    best = NOT_FIRED
    if count_read is not None:
        count = cast(int, ev.observations[count_read])
        if count > p.max_count:
            best = Outcome(
                escalating_confidence(count, p.max_count),
                f"{count} transactions from this {_subject_words(p)} in the last "
                f"{duration_words(p.window_ms)}; the limit is {p.max_count}",
            )
    if sum_read is not None and p.max_amount is not None:
        total = cast(int, ev.observations[sum_read])
        limit = p.max_amount.amount_minor
        if total > limit:
            confidence = escalating_confidence(total, limit)
            if confidence > best.confidence:
                best = Outcome(
                    confidence,
                    f"{money_words(total, p.max_amount.currency)} from this {_subject_words(p)} in the "
                    f"last {duration_words(p.window_ms)}; the limit is "
                    f"{money_words(limit, p.max_amount.currency)}",
                )
    return best


def _subject_words(p: VelocityParams) -> str:
    return p.subject.value.lower().replace("_", " ")


def amount(p: AmountParams, txn: Transaction) -> Outcome:
    for threshold in p.thresholds:
        if threshold.currency == txn.amount.currency and txn.amount.amount_minor >= threshold.amount_minor:
            return Outcome(
                escalating_confidence(txn.amount.amount_minor, threshold.amount_minor),
                f"amount {money_words(txn.amount.amount_minor, txn.amount.currency)} is at or above "
                f"the threshold {money_words(threshold.amount_minor, threshold.currency)}",
            )
    return NOT_FIRED


def kind_words(txn: Transaction) -> str:
    return txn.kind.value.lower()  # payment, transfer, payout


def location(p: LocationParams, txn: Transaction, ev: Evidence) -> Outcome:
    country = txn.country_code
    if not country:
        return NOT_FIRED
    reasons = []
    if country in p.country_codes:
        reasons.append(f"transaction from {country}, a listed high-risk country")
    problem = ""
    # The mismatch needs a user, the transaction's country and the profile's: without one
    # of them there is nothing to compare, and the rule does not fire.
    if p.fire_on_profile_country_mismatch and txn.user_id is not None:
        home = ev.profile.country_code.upper() if ev.profile is not None else ""
        if home and home != country:
            reasons.append(f"{kind_words(txn)} from {country}, the user's profile says {home}")
        elif ev.profile is None and ev.profile_problem:
            problem = f"{ev.profile_problem}; {country} could not be compared with the user's profile country"
    if reasons:
        return Outcome(BASIS_POINTS, "; ".join(reasons + ([problem] if problem else [])), bool(problem))
    if problem:
        return Outcome(0, problem, degraded=True)
    return NOT_FIRED


def impossible_travel(p: ImpossibleTravelParams, txn: Transaction, ev: Evidence, at_ms: int) -> Outcome:
    if txn.user_id is None or not txn.located:
        return NOT_FIRED
    if ev.observations is None:
        return _counters_down("location history")
    # The plan asked once, over the longest lookback of all travel rules; find that answer.
    series = geo_series(txn.user_id)
    last = next((v for r, v in ev.observations.items() if r.op == "last" and r.series == series), None)
    if last is None:
        return NOT_FIRED
    member, previous_ms = cast(tuple[str, int], last)
    if at_ms - previous_ms > p.lookback_ms:
        return NOT_FIRED
    lat, lon = parse_geo_member(member)
    assert txn.latitude is not None and txn.longitude is not None
    distance = haversine_km(lat, lon, txn.latitude, txn.longitude)
    if distance < p.min_distance_km or distance == 0:
        return NOT_FIRED
    hours = (at_ms - previous_ms) / 3_600_000
    speed = math.inf if hours <= 0 else distance / hours
    if speed <= p.max_speed_kmh:
        return NOT_FIRED
    minutes = max(0, round((at_ms - previous_ms) / 60_000))
    return Outcome(
        BASIS_POINTS if math.isinf(speed) else escalating_confidence(speed, p.max_speed_kmh),
        f"{distance:.0f} km from this user's previous transaction {minutes} min earlier; "
        f"that needs more than {p.max_speed_kmh} km/h",
    )


def device(p: DeviceParams, txn: Transaction, ev: Evidence, at_ms: int) -> Outcome:
    if not txn.device_fingerprint:
        if p.fire_on_missing_fingerprint:
            return Outcome(BASIS_POINTS, "the transaction carries no device fingerprint")
        return NOT_FIRED
    new = new_device(p, txn, ev, at_ms)
    shared = shared_device(p, txn, ev)
    if shared.degraded:  # the counters are down; the new-device half may still have fired
        if new.confidence:
            return Outcome(new.confidence, f"{new.reason}; {shared.reason}", degraded=True)
        return shared
    best, other = (new, shared) if new.confidence >= shared.confidence else (shared, new)
    if best.confidence and other.confidence:
        return Outcome(best.confidence, f"{best.reason}; {other.reason}")
    return best


def shared_device(p: DeviceParams, txn: Transaction, ev: Evidence) -> Outcome:
    read = device_read(p, txn)
    if read is None:
        return NOT_FIRED  # no user to count, or no limit on users
    if ev.observations is None:
        return _counters_down("device counters")
    users = cast(int, ev.observations[read])
    if users <= p.max_users_per_device:
        return NOT_FIRED
    return Outcome(
        escalating_confidence(users, p.max_users_per_device),
        f"{users} users on this device in the last {duration_words(p.window_ms)}; "
        f"the limit is {p.max_users_per_device}",
    )


def new_device(p: DeviceParams, txn: Transaction, ev: Evidence, at_ms: int) -> Outcome:
    """Fires when the user has no earlier, not declined, transaction from this device
    within the window; never without a user or a device."""
    if not p.fire_on_new_device_for_user or txn.user_id is None or not txn.device_fingerprint:
        return NOT_FIRED
    if ev.device_history is None:
        return NOT_FIRED  # not looked up: the check asks whenever a rule needs it
    last = ev.device_history.last_seen_ms
    if last is not None and last > at_ms - p.window_ms:
        return NOT_FIRED
    reason = f"first {kind_words(txn)} from this device for this user"
    if last is not None:
        reason += f" in the last {duration_words(p.window_ms)}"
    return Outcome(BASIS_POINTS, reason)


def blacklist(p: BlacklistParams, ev: Evidence) -> Outcome:
    hits = [m for m in ev.blacklist_matches if m.entry.entry_type in p.entry_types]
    if not hits:
        return NOT_FIRED
    words = "; ".join(f"{m.identifier.label} {m.entry.value} is blacklisted ({m.entry.reason})" for m in hits)
    return Outcome(BASIS_POINTS, words)


def pattern(p: PatternParams, txn: Transaction, ev: Evidence) -> Outcome:
    read = pattern_read(p, txn)
    if read is None:
        return NOT_FIRED
    if ev.observations is None:
        return _counters_down("transaction history")
    count, mean, std = cast(tuple[int, float, float], ev.observations[read])
    if count < p.min_history_count:
        return NOT_FIRED
    # A flat history would make any other amount infinitely unusual; one minor unit, or
    # 1% of the mean, is the least spread judged.
    spread = max(float(std), mean / 100, 1.0)
    z = (txn.amount.amount_minor - mean) / spread
    if z < p.z_score_threshold:
        return NOT_FIRED
    return Outcome(
        escalating_confidence(z, p.z_score_threshold),
        f"amount is {z:.1f} standard deviations above this user's mean of {mean:.0f} "
        f"{txn.amount.currency} minor units over {count} transactions; the threshold is "
        f"{p.z_score_threshold:g}",
    )


def kyc_limit(p: KycLimitParams, txn: Transaction, ev: Evidence) -> Outcome:
    if txn.user_id is None:
        return NOT_FIRED
    level = ev.profile.kyc_level if ev.profile is not None else txn.kyc_level
    degraded = ev.profile is None and bool(ev.profile_problem)
    note = f" ({ev.profile_problem}; judged on the KYC level the caller sent)" if degraded else ""
    limit = next(
        (
            lim
            for lim in p.limits
            if lim.kyc_level == level and lim.max_single.currency == txn.amount.currency
        ),
        None,
    )
    if limit is None:
        return Outcome(0, f"no limit for KYC level {level}{note}", degraded) if degraded else NOT_FIRED
    if txn.amount.amount_minor > limit.max_single.amount_minor:
        return Outcome(
            escalating_confidence(txn.amount.amount_minor, limit.max_single.amount_minor),
            f"amount {money_words(txn.amount.amount_minor, txn.amount.currency)} exceeds the single "
            f"limit {money_words(limit.max_single.amount_minor, txn.amount.currency)} of KYC level "
            f"{level}{note}",
            degraded,
        )
    if limit.max_daily is not None:
        read = daily_total_read(txn)
        if ev.observations is None or read is None:
            return Outcome(0, f"daily total unreachable (Redis); single limit respected{note}", True)
        total = cast(int, ev.observations[read])
        if total > limit.max_daily.amount_minor:
            return Outcome(
                escalating_confidence(total, limit.max_daily.amount_minor),
                f"{money_words(total, txn.amount.currency)} in the last 24h exceeds the daily limit "
                f"{money_words(limit.max_daily.amount_minor, txn.amount.currency)} of KYC level "
                f"{level}{note}",
                degraded,
            )
    return Outcome(0, f"within the limits of KYC level {level}{note}", degraded) if degraded else NOT_FIRED


def evaluate_rule(rule: FraudRule, txn: Transaction, ev: Evidence, at_ms: int) -> Outcome:
    p = rule.params
    if isinstance(p, VelocityParams):
        return velocity(p, txn, ev)
    if isinstance(p, AmountParams):
        return amount(p, txn)
    if isinstance(p, LocationParams):
        return location(p, txn, ev)
    if isinstance(p, ImpossibleTravelParams):
        return impossible_travel(p, txn, ev, at_ms)
    if isinstance(p, DeviceParams):
        return device(p, txn, ev, at_ms)
    if isinstance(p, BlacklistParams):
        return blacklist(p, ev)
    if isinstance(p, PatternParams):
        return pattern(p, txn, ev)
    return kyc_limit(p, txn, ev)


@dataclass(frozen=True)
class Verdict:
    risk_score: int
    decision: Decision
    fired_rules: tuple[FiredRule, ...]
    degraded: bool


def judge(
    rules: Iterable[FraudRule], txn: Transaction, ev: Evidence, thresholds: Thresholds, at_ms: int
) -> Verdict:
    fired: list[FiredRule] = []
    for rule in rules:
        outcome = evaluate_rule(rule, txn, ev, at_ms)
        if outcome.confidence <= 0 and not outcome.degraded:
            continue
        fired.append(
            FiredRule(
                rule_id=rule.rule_id,
                rule_type=rule.rule_type,
                rule_name=rule.name,
                weight=rule.weight,
                confidence=outcome.confidence,
                contribution=rule.weight * outcome.confidence // BASIS_POINTS,
                reason=outcome.reason,
                degraded=outcome.degraded,
            )
        )
    fired.sort(key=lambda f: (-f.contribution, f.rule_name, str(f.rule_id)))
    score = min(BASIS_POINTS, sum(f.contribution for f in fired))
    degraded = any(f.degraded for f in fired)
    return Verdict(score, decide(score, degraded, thresholds), tuple(fired), degraded)


def decide(score: int, degraded: bool, thresholds: Thresholds) -> Decision:
    if score >= thresholds.decline:
        return Decision.DECLINE
    if score >= thresholds.review:
        return Decision.REVIEW
    if degraded and thresholds.degraded_minimum is Decision.REVIEW:
        return Decision.REVIEW
    return Decision.APPROVE
