"""The fraud rule engine's pure logic: each rule type against hand-made evidence, the score
and decision at the threshold edges, the counter plan, the blacklist index and the
parsing of Redis answers. No Redis, Postgres or gRPC here (see the integration tests)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.fraud.adapters.counters import answer
from services.fraud.adapters.repository import params_from_json, params_to_json
from services.fraud.domain.blacklist import BlacklistIndex, InvalidBlacklistValue, normalize
from services.fraud.domain.evidence import (
    DeviceHistory,
    Read,
    daily_total_read,
    device_read,
    escalating_confidence,
    geo_member,
    geo_series,
    needs_device_history,
    needs_profile,
    pattern_read,
    plan_counters,
    velocity_reads,
)
from services.fraud.domain.model import (
    BASIS_POINTS,
    AmountParams,
    BlacklistEntry,
    BlacklistParams,
    BlacklistSource,
    BlacklistType,
    Decision,
    DeviceParams,
    FraudRule,
    ImpossibleTravelParams,
    KycLevelLimit,
    KycLimitParams,
    LocationParams,
    Money,
    PatternParams,
    PaymentMethodKind,
    RiskProfile,
    RuleParams,
    RuleState,
    RuleType,
    Thresholds,
    Transaction,
    TransactionKind,
    VelocityParams,
    VelocitySubject,
)
from services.fraud.domain.rules import Evidence, decide, haversine_km, identifiers, judge

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
AT_MS = int(NOW.timestamp() * 1000)
HOUR_MS = 3_600_000
THRESHOLDS = Thresholds(review=5000, decline=8000, degraded_minimum=Decision.APPROVE)


def txn(**changes: object) -> Transaction:
    base = Transaction(
        reference=str(uuid.uuid4()),
        kind=TransactionKind.PAYMENT,
        transaction_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        merchant_id=uuid.uuid4(),
        counterparty_user_id=None,
        amount=Money(1500, "EUR"),
        method=PaymentMethodKind.CARD,
        card_fingerprint="ab" * 32,
        device_fingerprint="device-1",
        ip_address="203.0.113.7",
        country_code="DE",
        latitude=52.52,
        longitude=13.40,
        email="payer@example.com",
        kyc_level=0,
        occurred_at=NOW,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def rule(params: RuleParams, weight: int = 6000, name: str = "r") -> FraudRule:
    types = {
        VelocityParams: RuleType.VELOCITY,
        AmountParams: RuleType.AMOUNT,
        LocationParams: RuleType.LOCATION,
        ImpossibleTravelParams: RuleType.IMPOSSIBLE_TRAVEL,
        DeviceParams: RuleType.DEVICE,
        BlacklistParams: RuleType.BLACKLIST,
        PatternParams: RuleType.PATTERN,
        KycLimitParams: RuleType.KYC_LIMIT,
    }
    return FraudRule(
        uuid.uuid4(), name, "", types[type(params)], weight, RuleState.ENABLED, params, 1, NOW, NOW
    )


def evidence(observations: dict[Read, object] | None | str = "empty", **kwargs: object) -> Evidence:
    return Evidence(
        observations={} if observations == "empty" else observations,  # type: ignore[arg-type]
        blacklist_matches=kwargs.get("matches", ()),  # type: ignore[arg-type]
        profile=kwargs.get("profile"),  # type: ignore[arg-type]
        profile_problem=str(kwargs.get("problem", "")),
        device_history=kwargs.get("history"),  # type: ignore[arg-type]
    )


def only(rules: list[FraudRule], t: Transaction, ev: Evidence, thresholds: Thresholds = THRESHOLDS):
    return judge(rules, t, ev, thresholds, AT_MS)


# -- velocity -----------------------------------------------------------------------------
def test_velocity_fires_only_above_the_count_with_growing_confidence() -> None:
    p = VelocityParams(VelocitySubject.USER, HOUR_MS, 10, None)
    t = txn()
    count_read, _ = velocity_reads(p, t)
    assert count_read is not None
    at_limit = only([rule(p)], t, evidence({count_read: 10}))
    assert at_limit.fired_rules == () and at_limit.risk_score == 0
    just_over = only([rule(p)], t, evidence({count_read: 11}))
    assert just_over.fired_rules[0].confidence == 5500
    assert "11 transactions from this user in the last 1h; the limit is 10" in just_over.fired_rules[0].reason
    double = only([rule(p)], t, evidence({count_read: 20}))
    assert double.fired_rules[0].confidence == BASIS_POINTS
    assert double.risk_score == 6000


def test_velocity_sums_amount_in_the_limit_currency() -> None:
    p = VelocityParams(VelocitySubject.CARD_FINGERPRINT, HOUR_MS, 0, Money(10_000, "EUR"))
    t = txn()
    count_read, sum_read = velocity_reads(p, t)
    assert count_read is None and sum_read is not None and sum_read.currency == "EUR"
    assert only([rule(p)], t, evidence({sum_read: 10_000})).fired_rules == ()
    fired = only([rule(p)], t, evidence({sum_read: 10_001})).fired_rules
    assert fired and "10001 EUR" in fired[0].reason


def test_velocity_without_its_subject_never_fires() -> None:
    p = VelocityParams(VelocitySubject.DEVICE, HOUR_MS, 1, None)
    assert velocity_reads(p, txn(device_fingerprint=None)) == (None, None)
    assert only([rule(p)], txn(device_fingerprint=None), evidence(None)).fired_rules == ()


def test_velocity_with_counters_down_is_degraded_not_fired() -> None:
    p = VelocityParams(VelocitySubject.USER, HOUR_MS, 10, None)
    verdict = only([rule(p)], txn(), evidence(None))
    assert verdict.degraded and verdict.risk_score == 0 and verdict.decision is Decision.APPROVE
    assert verdict.fired_rules[0].degraded and "unreachable" in verdict.fired_rules[0].reason


# -- amount -------------------------------------------------------------------------------
def test_amount_fires_at_the_threshold_of_its_currency_only() -> None:
    p = AmountParams((Money(100_000, "EUR"), Money(50_000, "USD")))
    assert only([rule(p)], txn(amount=Money(99_999, "EUR")), evidence()).fired_rules == ()
    at = only([rule(p, weight=4000)], txn(amount=Money(100_000, "EUR")), evidence())
    assert at.fired_rules[0].confidence == 5000 and at.risk_score == 2000
    assert only([rule(p)], txn(amount=Money(10_000_000, "GBP")), evidence()).fired_rules == ()


# -- location and impossible travel -------------------------------------------------------
def test_location_fires_for_a_listed_country() -> None:
    p = LocationParams(("KP", "IR"))
    assert only([rule(p)], txn(country_code="IR"), evidence()).fired_rules[0].confidence == BASIS_POINTS
    assert only([rule(p)], txn(country_code="DE"), evidence()).fired_rules == ()
    assert only([rule(p)], txn(country_code=None), evidence()).fired_rules == ()


GERMAN = RiskProfile(kyc_level=1, country_code="DE", email_domain="example.com")
MISMATCH = LocationParams((), fire_on_profile_country_mismatch=True)


def test_profile_country_mismatch_fires_with_both_countries_in_the_reason() -> None:
    verdict = only([rule(MISMATCH, weight=2000)], txn(country_code="FR"), evidence(profile=GERMAN))
    assert [(f.confidence, f.contribution, f.degraded) for f in verdict.fired_rules] == [
        (BASIS_POINTS, 2000, False)
    ]
    assert verdict.fired_rules[0].reason == "payment from FR, the user's profile says DE"
    transfer = only(
        [rule(MISMATCH)], txn(country_code="FR", kind=TransactionKind.TRANSFER), evidence(profile=GERMAN)
    )
    assert transfer.fired_rules[0].reason == "transfer from FR, the user's profile says DE"


@pytest.mark.parametrize(
    ("changes", "profile"),
    [
        ({"country_code": "DE"}, GERMAN),  # the same country
        ({"country_code": None}, GERMAN),  # no transaction country
        ({"user_id": None}, GERMAN),  # a guest: no profile to compare with
        ({}, RiskProfile(kyc_level=1, country_code="", email_domain="")),  # a profile without a country
        ({}, None),  # a user the users service does not know
    ],
)
def test_profile_country_mismatch_needs_all_of_its_inputs(
    changes: dict[str, object], profile: RiskProfile | None
) -> None:
    t = txn(**{"country_code": "FR", **changes})
    assert only([rule(MISMATCH)], t, evidence(profile=profile)).fired_rules == ()


def test_profile_country_mismatch_without_the_users_service_is_degraded() -> None:
    problem = "users service answered UNAVAILABLE to GetUserRiskProfile"
    verdict = only([rule(MISMATCH)], txn(country_code="FR"), evidence(problem=problem))
    assert verdict.degraded and verdict.risk_score == 0
    assert verdict.fired_rules[0].degraded and "UNAVAILABLE" in verdict.fired_rules[0].reason
    # A listed country still fires, saying what could not be compared.
    listed = LocationParams(("FR",), fire_on_profile_country_mismatch=True)
    both = only([rule(listed, weight=3000)], txn(country_code="FR"), evidence(problem=problem))
    assert both.risk_score == 3000 and both.fired_rules[0].degraded
    assert "a listed high-risk country" in both.fired_rules[0].reason


def test_location_reports_a_listed_country_and_a_mismatch_together() -> None:
    p = LocationParams(("FR",), fire_on_profile_country_mismatch=True)
    fired = only([rule(p)], txn(country_code="FR"), evidence(profile=GERMAN)).fired_rules
    assert fired[0].confidence == BASIS_POINTS
    assert fired[0].reason == (
        "transaction from FR, a listed high-risk country; payment from FR, the user's profile says DE"
    )
    listed_only = LocationParams(("FR",))
    assert only([rule(listed_only)], txn(country_code="IT"), evidence(profile=GERMAN)).fired_rules == ()


def test_the_profile_is_asked_only_when_a_rule_can_use_it() -> None:
    mismatch, kyc, listed = rule(MISMATCH), rule(KYC), rule(LocationParams(("KP",)))
    assert needs_profile([mismatch], txn())
    assert not needs_profile([mismatch], txn(country_code=None))
    assert not needs_profile([mismatch, kyc], txn(user_id=None))
    assert needs_profile([kyc], txn(country_code=None))
    assert not needs_profile([listed], txn())


def test_haversine_berlin_new_york() -> None:
    assert 6350 < haversine_km(52.52, 13.40, 40.71, -74.01) < 6420


def test_impossible_travel_compares_speed_with_the_previous_located_transaction() -> None:
    p = ImpossibleTravelParams(max_speed_kmh=900, min_distance_km=300, lookback_ms=24 * HOUR_MS)
    t = txn(latitude=40.71, longitude=-74.01)  # New York, now
    read = Read("last", geo_series(t.user_id), p.lookback_ms, exclude=geo_member(t))  # type: ignore[arg-type]
    berlin = f"ref|{52.52!r}|{13.40!r}"
    one_hour_ago = only([rule(p)], t, evidence({read: (berlin, AT_MS - HOUR_MS)}))
    assert one_hour_ago.fired_rules and "km/h" in one_hour_ago.fired_rules[0].reason
    ten_hours_ago = only([rule(p)], t, evidence({read: (berlin, AT_MS - 10 * HOUR_MS)}))
    assert ten_hours_ago.fired_rules == ()  # ~640 km/h: an airliner does that
    too_old = only([rule(p)], t, evidence({read: (berlin, AT_MS - 25 * HOUR_MS)}))
    assert too_old.fired_rules == ()
    near = only([rule(p)], t, evidence({read: (f"ref|{40.9!r}|{-74.0!r}", AT_MS - 60_000)}))
    assert near.fired_rules == ()  # ~21 km: below min_distance_km
    nothing_before = only([rule(p)], t, evidence({read: None}))
    assert nothing_before.fired_rules == ()


def test_the_plan_asks_for_the_previous_location_once_over_the_longest_lookback() -> None:
    short = rule(ImpossibleTravelParams(900, 300, HOUR_MS))
    long = rule(ImpossibleTravelParams(500, 100, 10 * HOUR_MS))
    plan = plan_counters([short, long], txn(), AT_MS)
    lasts = [r for r in plan.reads if r.op == "last"]
    assert len(lasts) == 1 and lasts[0].window_ms == 10 * HOUR_MS


# -- device -------------------------------------------------------------------------------
def test_device_fires_above_the_distinct_user_count_or_on_a_missing_fingerprint() -> None:
    p = DeviceParams(max_users_per_device=3, window_ms=24 * HOUR_MS, fire_on_missing_fingerprint=True)
    t = txn()
    read = device_read(p, t)
    assert read is not None
    assert only([rule(p)], t, evidence({read: 3})).fired_rules == ()
    assert "4 users on this device" in only([rule(p)], t, evidence({read: 4})).fired_rules[0].reason
    missing = only([rule(p)], txn(device_fingerprint=None), evidence())
    assert missing.fired_rules[0].confidence == BASIS_POINTS
    lenient = DeviceParams(3, 24 * HOUR_MS, False)
    assert only([rule(lenient)], txn(device_fingerprint=None), evidence()).fired_rules == ()


NEW_DEVICE = DeviceParams(0, 30 * 24 * HOUR_MS, False, fire_on_new_device_for_user=True)


def test_new_device_fires_when_the_user_has_not_used_it_within_the_window() -> None:
    never = only([rule(NEW_DEVICE, weight=1500)], txn(), evidence(history=DeviceHistory(None)))
    assert [(f.confidence, f.contribution) for f in never.fired_rules] == [(BASIS_POINTS, 1500)]
    assert never.fired_rules[0].reason == "first payment from this device for this user"
    recent = DeviceHistory(AT_MS - 29 * 24 * HOUR_MS)
    assert only([rule(NEW_DEVICE)], txn(), evidence(history=recent)).fired_rules == ()
    long_ago = DeviceHistory(AT_MS - 31 * 24 * HOUR_MS)
    stale = only([rule(NEW_DEVICE)], txn(), evidence(history=long_ago)).fired_rules
    assert stale[0].reason == "first payment from this device for this user in the last 30d"


@pytest.mark.parametrize(
    ("changes", "history"),
    [
        ({"user_id": None}, DeviceHistory(None)),  # a guest
        ({"device_fingerprint": None}, DeviceHistory(None)),  # no device
        ({}, None),  # not looked up
    ],
)
def test_new_device_needs_a_user_and_a_device(
    changes: dict[str, object], history: DeviceHistory | None
) -> None:
    assert only([rule(NEW_DEVICE)], txn(**changes), evidence(history=history)).fired_rules == ()


def test_a_new_device_rule_without_a_user_limit_needs_no_counters() -> None:
    t = txn()
    assert device_read(NEW_DEVICE, t) is None
    plan = plan_counters([rule(NEW_DEVICE)], t, AT_MS)
    assert not plan.reads and all(w.series.kind != "device" for w in plan.writes)
    # Redis being down does not matter to it: the history is Postgres's.
    verdict = only([rule(NEW_DEVICE)], t, evidence(None, history=DeviceHistory(None)))
    assert not verdict.degraded and verdict.fired_rules[0].confidence == BASIS_POINTS


def test_new_device_and_shared_device_in_one_rule() -> None:
    p = DeviceParams(3, 24 * HOUR_MS, False, fire_on_new_device_for_user=True)
    t = txn()
    read = device_read(p, t)
    assert read is not None
    both = only([rule(p)], t, evidence({read: 4}, history=DeviceHistory(None))).fired_rules
    assert both[0].confidence == BASIS_POINTS
    assert both[0].reason == (
        "first payment from this device for this user; 4 users on this device in the last 1d; the limit is 3"
    )
    counters_down = only([rule(p)], t, evidence(None, history=DeviceHistory(None))).fired_rules
    assert counters_down[0].degraded and counters_down[0].confidence == BASIS_POINTS
    assert "first payment" in counters_down[0].reason and "unreachable" in counters_down[0].reason
    known = only([rule(p)], t, evidence(None, history=DeviceHistory(AT_MS - HOUR_MS))).fired_rules
    assert known[0].degraded and known[0].confidence == 0


def test_the_device_history_is_asked_only_when_a_rule_can_use_it() -> None:
    shared = rule(DeviceParams(3, HOUR_MS, False))
    assert needs_device_history([shared, rule(NEW_DEVICE)], txn())
    assert not needs_device_history([shared], txn())
    assert not needs_device_history([rule(NEW_DEVICE)], txn(user_id=None))
    assert not needs_device_history([rule(NEW_DEVICE)], txn(device_fingerprint=None))


# -- blacklist ----------------------------------------------------------------------------
def entry(entry_type: BlacklistType, value: str, **changes: object) -> BlacklistEntry:
    base = BlacklistEntry(
        uuid.uuid4(),
        entry_type,
        normalize(entry_type, value),
        "test",
        BlacklistSource.MANUAL,
        None,
        None,
        NOW,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_blacklist_index_matches_exact_values_and_networks() -> None:
    index = BlacklistIndex()
    t = txn(ip_address="2001:db8::42", email="Someone@Bad.Example")
    index.apply(entry(BlacklistType.IP_RANGE, "2001:db8::/64"))
    index.apply(entry(BlacklistType.EMAIL_DOMAIN, "bad.example"))
    found = {m.entry.entry_type for m in index.matches(identifiers(t), NOW)}
    assert found == {BlacklistType.IP_RANGE, BlacklistType.EMAIL_DOMAIN}
    assert index.matches(identifiers(txn(ip_address="2001:db9::1", email=None)), NOW) == []


def test_blacklist_index_drops_removed_and_ignores_expired_entries() -> None:
    index = BlacklistIndex()
    card = entry(BlacklistType.CARD_FINGERPRINT, "ab" * 32)
    index.apply(card)
    assert len(index.matches(identifiers(txn()), NOW)) == 1
    index.apply(dataclasses.replace(card, removed_at=NOW))
    assert index.matches(identifiers(txn()), NOW) == [] and len(index) == 0
    index.apply(entry(BlacklistType.DEVICE, "device-1", expires_at=NOW - timedelta(seconds=1)))
    assert index.matches(identifiers(txn()), NOW) == []


def test_blacklist_rule_fires_only_for_its_entry_types() -> None:
    index = BlacklistIndex()
    index.apply(entry(BlacklistType.DEVICE, "device-1"))
    matches = tuple(index.matches(identifiers(txn()), NOW))
    device_only = only(
        [rule(BlacklistParams((BlacklistType.DEVICE,)), 10_000)], txn(), evidence(matches=matches)
    )
    assert (
        device_only.decision is Decision.DECLINE
        and "device device-1 is blacklisted" in device_only.fired_rules[0].reason
    )
    cards_only = only(
        [rule(BlacklistParams((BlacklistType.CARD_FINGERPRINT,)))], txn(), evidence(matches=matches)
    )
    assert cards_only.fired_rules == ()


def test_blacklist_values_are_normalised_or_refused() -> None:
    assert normalize(BlacklistType.IP, "2001:0db8:0000::0001") == "2001:db8::1"
    assert normalize(BlacklistType.EMAIL_DOMAIN, "MailInator.COM.") == "mailinator.com"
    with pytest.raises(InvalidBlacklistValue):
        normalize(BlacklistType.IP_RANGE, "10.0.0.1/8")  # host bits set


# -- pattern ------------------------------------------------------------------------------
def test_pattern_fires_on_an_outlier_once_there_is_enough_history() -> None:
    p = PatternParams(lookback_ms=90 * 24 * HOUR_MS, min_history_count=5, z_score_threshold=3.0)
    t = txn(amount=Money(10_000, "EUR"))
    read = pattern_read(p, t)
    assert read is not None
    assert only([rule(p)], t, evidence({read: (4, 1000.0, 100.0)})).fired_rules == ()  # too little history
    fired = only([rule(p)], t, evidence({read: (10, 1000.0, 100.0)})).fired_rules
    assert fired and "standard deviations above" in fired[0].reason
    usual = dataclasses.replace(t, amount=Money(1200, "EUR"), reference="usual")
    usual_read = pattern_read(p, usual)
    assert usual_read is not None
    assert only([rule(p)], usual, evidence({usual_read: (10, 1000.0, 100.0)})).fired_rules == ()


def test_counter_answers_compute_statistics_per_currency_and_join_the_scripts_sums() -> None:
    series = geo_series(uuid.uuid4())
    members = ["a|EUR|100", "b|EUR|300", "c|USD|5000", "me|EUR|999"]
    # The script sums in two halves split at 10^9 (tests/integration/test_fraud_counters.py)
    assert answer(Read("sum", series, 1, "EUR"), ["0", "1399"]) == 1399
    assert answer(Read("sum", series, 1, "EUR"), ["9223372036", "854775807"]) == 2**63 - 1
    stats = answer(Read("stats", series, 1, "EUR", exclude="me|EUR|999"), members)
    assert stats == (2, 200.0, 100.0)
    assert answer(Read("last", series, 1, exclude="me"), ["me", "5", "x|1.0|2.0", "3"]) == (
        "x|1.0|2.0",
        3,
    )
    assert answer(Read("last", series, 1, exclude="me"), ["me", "5"]) is None
    # Lua's cjson encodes an empty array as an empty object
    assert answer(Read("last", series, 1, exclude="me"), {}) is None
    assert answer(Read("stats", series, 1, "EUR"), {}) == (0, 0.0, 0.0)


# -- KYC ----------------------------------------------------------------------------------
KYC = KycLimitParams(
    (
        KycLevelLimit(0, Money(100_000, "EUR"), Money(300_000, "EUR")),
        KycLevelLimit(2, Money(10_000_000, "EUR"), None),
    )
)


def test_kyc_limit_uses_the_profile_level_and_the_daily_total() -> None:
    t = txn(amount=Money(150_000, "EUR"), kyc_level=2)
    level0 = RiskProfile(kyc_level=0, country_code="DE", email_domain="example.com")
    daily = daily_total_read(t)
    assert daily is not None
    over_single = only([rule(KYC)], t, evidence({daily: 150_000}, profile=level0)).fired_rules
    assert over_single and "single limit" in over_single[0].reason and not over_single[0].degraded
    level2 = RiskProfile(kyc_level=2, country_code="DE", email_domain="example.com")
    assert only([rule(KYC)], t, evidence({daily: 150_000}, profile=level2)).fired_rules == ()
    small = dataclasses.replace(t, amount=Money(50_000, "EUR"))
    over_daily = only([rule(KYC)], small, evidence({daily: 300_001}, profile=level0)).fired_rules
    assert over_daily and "daily limit" in over_daily[0].reason


def test_kyc_limit_without_the_users_service_is_degraded_and_uses_the_callers_level() -> None:
    t = txn(amount=Money(150_000, "EUR"), kyc_level=0)
    daily = daily_total_read(t)
    problem = "users service answered UNIMPLEMENTED to GetUserRiskProfile"
    verdict = only([rule(KYC)], t, evidence({daily: 150_000}, problem=problem))  # type: ignore[dict-item]
    assert verdict.degraded and verdict.fired_rules[0].degraded
    assert verdict.fired_rules[0].contribution > 0 and "UNIMPLEMENTED" in verdict.fired_rules[0].reason


# -- scoring and decisions ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0, Decision.APPROVE),
        (4999, Decision.APPROVE),
        (5000, Decision.REVIEW),
        (7999, Decision.REVIEW),
        (8000, Decision.DECLINE),
        (10_000, Decision.DECLINE),
    ],
)
def test_decision_at_the_threshold_edges(score: int, expected: Decision) -> None:
    assert decide(score, False, THRESHOLDS) is expected


def test_equal_thresholds_leave_no_review_band() -> None:
    same = Thresholds(review=6000, decline=6000, degraded_minimum=Decision.APPROVE)
    assert decide(5999, False, same) is Decision.APPROVE
    assert decide(6000, False, same) is Decision.DECLINE


def test_degraded_minimum_review_sends_degraded_approvals_to_review() -> None:
    strict = dataclasses.replace(THRESHOLDS, degraded_minimum=Decision.REVIEW)
    assert decide(100, True, strict) is Decision.REVIEW
    assert decide(100, False, strict) is Decision.APPROVE
    assert decide(9000, True, strict) is Decision.DECLINE


def test_score_is_the_capped_sum_of_contributions_largest_first() -> None:
    t = txn(amount=Money(2_000_000, "EUR"), country_code="IR")
    rules = [
        rule(AmountParams((Money(1_000_000, "EUR"),)), weight=7000, name="amount"),
        rule(LocationParams(("IR",)), weight=6000, name="location"),
    ]
    verdict = only(rules, t, evidence())
    assert [f.rule_name for f in verdict.fired_rules] == ["amount", "location"]
    assert [f.contribution for f in verdict.fired_rules] == [7000, 6000]
    assert verdict.risk_score == BASIS_POINTS and verdict.decision is Decision.DECLINE


def test_escalating_confidence() -> None:
    assert escalating_confidence(11, 10) == 5500
    assert escalating_confidence(10, 10) == 5000
    assert escalating_confidence(1000, 10) == BASIS_POINTS


@pytest.mark.parametrize(
    "params",
    [
        VelocityParams(VelocitySubject.EMAIL, 60_000, 3, Money(5, "EUR")),
        AmountParams((Money(1, "EUR"),)),
        LocationParams(("DE",)),
        LocationParams((), fire_on_profile_country_mismatch=True),
        ImpossibleTravelParams(900, 10, 1000),
        DeviceParams(2, 1000, True),
        DeviceParams(0, 1000, False, fire_on_new_device_for_user=True),
        BlacklistParams((BlacklistType.IP, BlacklistType.USER)),
        PatternParams(1000, 3, 2.5),
        KYC,
    ],
)
def test_parameters_survive_their_json_form(params: RuleParams) -> None:
    assert params_from_json(rule(params).rule_type, params_to_json(params)) == params


def test_parameters_stored_before_the_new_flags_read_as_off() -> None:
    assert params_from_json(RuleType.LOCATION, {"country_codes": ["KP"]}) == LocationParams(("KP",), False)
    stored = {"max_users_per_device": 5, "window_ms": 1000, "fire_on_missing_fingerprint": False}
    assert params_from_json(RuleType.DEVICE, stored) == DeviceParams(5, 1000, False, False)
