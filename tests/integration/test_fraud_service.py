"""The fraud service over gRPC, against the mesh's real PostgreSQL and Redis: every rule
type (the default rule set where it covers it, test rules otherwise), thresholds at their
edges, rule changes at run time, idempotent retries, fraud reports and bad input.

The rules and thresholds are global, so every test uses its own users, devices, cards,
IP addresses and e-mail domains; rules a test creates match only what that test sends
(a currency or country nobody else uses) and are disabled in a `finally`, and changed
thresholds are restored the same way.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import redis as redis_client
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from interpay.common.v1.money_pb2 import Money
from interpay.fraud.v1 import fraud_service_pb2 as pb
from interpay.fraud.v1.fraud_service_pb2_grpc import FraudServiceStub
from interpay.users.v1 import users_service_pb2 as users_pb
from interpay.users.v1.users_service_pb2_grpc import UserServiceStub

from tests.helpers import rpc_details

# Default rules (services/fraud/migrations/0002_default_rules.sql).
USER_HOURLY = "0b1ac4e1-5700-4a3e-9f6e-000000000002"
CARD_TESTING = "0b1ac4e1-5700-4a3e-9f6e-000000000005"
LARGE_AMOUNT = "0b1ac4e1-5700-4a3e-9f6e-000000000008"
IMPOSSIBLE_TRAVEL = "0b1ac4e1-5700-4a3e-9f6e-000000000009"
SHARED_DEVICE = "0b1ac4e1-5700-4a3e-9f6e-00000000000a"
PATTERN = "0b1ac4e1-5700-4a3e-9f6e-00000000000b"
KYC_LIMITS = "0b1ac4e1-5700-4a3e-9f6e-00000000000c"
# Default rules (services/fraud/migrations/0004_profile_country_and_new_device.sql).
COUNTRY_MISMATCH = "0b1ac4e1-5700-4a3e-9f6e-00000000000d"
NEW_DEVICE = "0b1ac4e1-5700-4a3e-9f6e-00000000000e"
BLACKLIST = "0b1ac4e1-5700-4a3e-9f6e-000000000001"
# Test rules match only these, which no other caller of the mesh sends.
TEST_CURRENCY = "XPT"
TEST_COUNTRY = "AQ"


@pytest.fixture(scope="module")
def fraud(channel: Callable[..., grpc.Channel]) -> FraudServiceStub:
    return FraudServiceStub(channel("fraud", "orchestrator"))  # CheckTransaction is its internal RPC


def ts(at: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(at)
    return t


def fingerprint() -> str:
    return secrets.token_hex(32)


def random_ipv6() -> str:
    return (
        f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::{secrets.randbelow(0xFFFF):x}"
    )


def request(**fields: Any) -> pb.CheckTransactionRequest:
    """A small, ordinary card payment by a fresh user on a fresh device, card and address."""
    values: dict[str, Any] = {
        "reference": f"test-{uuid.uuid4()}",
        "transaction_kind": pb.TRANSACTION_KIND_PAYMENT,
        "transaction_id": str(uuid.uuid4()),
        "user_id": str(uuid.uuid4()),
        "merchant_id": str(uuid.uuid4()),
        "amount": Money(amount_minor=1500, currency="EUR"),
        "payment_method_kind": pb.PAYMENT_METHOD_KIND_CARD,
        "card_fingerprint": fingerprint(),
        "device_fingerprint": f"device-{uuid.uuid4()}",
        "ip_address": random_ipv6(),
        "email": f"payer@{uuid.uuid4().hex}.example",
        "occur_time": ts(datetime.now(UTC)),
        "kyc_level": 2,
    }
    values.update(fields)
    return pb.CheckTransactionRequest(**values)


def check(fraud: FraudServiceStub, **fields: Any) -> pb.FraudCheck:
    return fraud.CheckTransaction(request(**fields)).fraud_check  # type: ignore[no-any-return]


def fired(c: pb.FraudCheck, rule_id: str) -> pb.FiredRule | None:
    return next((f for f in c.fired_rules if f.rule_id == rule_id and f.contribution > 0), None)


def failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    info, violations = rpc_details(caught.value)  # type: ignore[arg-type]
    return caught.value.code(), info.reason if info else "", [v.field for v in violations]  # type: ignore[attr-defined]


def eventually(probe: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Polls until `probe` holds (rule changes reach every replica within ~1 s)."""
    deadline = time.monotonic() + seconds
    while True:
        if probe():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def duration(seconds: int) -> Duration:
    return Duration(seconds=seconds)


@pytest.fixture
def test_rules(fraud: FraudServiceStub) -> Iterator[Callable[[pb.FraudRule], pb.FraudRule]]:
    """Creates rules for one test and disables them afterwards."""
    created: list[str] = []

    def create(rule: pb.FraudRule) -> pb.FraudRule:
        rule.name = f"test: {rule.name} {uuid.uuid4().hex[:8]}"
        made = fraud.CreateFraudRule(pb.CreateFraudRuleRequest(fraud_rule=rule)).fraud_rule
        created.append(made.rule_id)
        return made  # type: ignore[no-any-return]

    yield create
    for rule_id in created:
        fraud.DisableFraudRule(pb.DisableFraudRuleRequest(rule_id=rule_id, reason="test finished"))


def amount_rule(threshold: int, weight: int) -> pb.FraudRule:
    return pb.FraudRule(
        name="amount",
        rule_type=pb.RULE_TYPE_AMOUNT,
        weight=weight,
        amount=pb.AmountParameters(thresholds=[Money(amount_minor=threshold, currency=TEST_CURRENCY)]),
    )


# -- an ordinary payment ------------------------------------------------------------------
def test_an_ordinary_small_payment_is_approved_and_recorded(fraud: FraudServiceStub) -> None:
    req = request()
    c = fraud.CheckTransaction(req).fraud_check
    # The user's first payment from this device: the only signal, and a weak one.
    new_device = fired(c, NEW_DEVICE)
    assert c.decision == pb.DECISION_APPROVE and new_device is not None
    assert c.risk_score == new_device.contribution < c.review_threshold
    assert all(f.contribution == 0 for f in c.fired_rules if f.rule_id != NEW_DEVICE)
    assert (c.review_threshold, c.decline_threshold) != (0, 0)
    recorded = fraud.GetFraudCheck(pb.GetFraudCheckRequest(check_id=c.check_id)).fraud_check
    assert recorded == c
    assert recorded.reference == req.reference and recorded.card_fingerprint == req.card_fingerprint
    listed = fraud.ListFraudChecks(pb.ListFraudChecksRequest(user_id=req.user_id)).fraud_checks
    assert [x.check_id for x in listed] == [c.check_id]


# -- every rule type ----------------------------------------------------------------------
def test_velocity_per_user_fires_on_the_eleventh_in_an_hour(fraud: FraudServiceStub) -> None:
    user = str(uuid.uuid4())
    first_ten = [check(fraud, user_id=user) for _ in range(10)]
    assert not any(fired(c, USER_HOURLY) for c in first_ten)
    eleventh = check(fraud, user_id=user)
    hit = fired(eleventh, USER_HOURLY)
    assert hit is not None and "11 transactions from this user in the last 1h; the limit is 10" in hit.reason
    assert eleventh.risk_score >= hit.contribution > 0


def test_card_testing_burst_on_one_card_fires(fraud: FraudServiceStub) -> None:
    card = fingerprint()
    burst = [
        check(fraud, card_fingerprint=card, amount=Money(amount_minor=100, currency="EUR")) for _ in range(6)
    ]
    assert not any(fired(c, CARD_TESTING) for c in burst[:5])
    hit = fired(burst[5], CARD_TESTING)
    assert hit is not None and "this card fingerprint in the last 10min" in hit.reason


def test_velocity_by_amount_over_a_window(fraud: FraudServiceStub, test_rules: Any) -> None:
    rule = test_rules(
        pb.FraudRule(
            name="ip amount",
            rule_type=pb.RULE_TYPE_VELOCITY,
            weight=4000,
            velocity=pb.VelocityParameters(
                subject=pb.VELOCITY_SUBJECT_IP_ADDRESS,
                window=duration(3600),
                max_amount=Money(amount_minor=1000, currency=TEST_CURRENCY),
            ),
        )
    )
    ip = random_ipv6()
    under = check(fraud, ip_address=ip, amount=Money(amount_minor=600, currency=TEST_CURRENCY))
    over = check(fraud, ip_address=ip, amount=Money(amount_minor=600, currency=TEST_CURRENCY))
    assert fired(under, rule.rule_id) is None
    hit = fired(over, rule.rule_id)
    assert hit is not None and "1200 XPT" in hit.reason and hit.contribution == 4000 * hit.confidence // 10000


def test_velocity_per_email_counts_without_storing_the_address(
    fraud: FraudServiceStub, test_rules: Any, profile: Any
) -> None:
    rule = test_rules(
        pb.FraudRule(
            name="email count",
            rule_type=pb.RULE_TYPE_VELOCITY,
            weight=4000,
            velocity=pb.VelocityParameters(
                subject=pb.VELOCITY_SUBJECT_EMAIL, window=duration(3600), max_count=1
            ),
        )
    )
    email = f"Velocity.{uuid.uuid4().hex}@Example.org"
    first, second = check(fraud, email=email), check(fraud, email=email.lower())
    assert fired(first, rule.rule_id) is None and fired(second, rule.rule_id) is not None
    client = redis_client.Redis(host="127.0.0.1", port=profile.redis_port)
    try:
        local_part = email.split("@")[0].lower().encode()
        assert not [k for k in client.scan_iter(match=b"*", count=10_000) if local_part in k.lower()]
    finally:
        client.close()


def test_amount_threshold_edge(fraud: FraudServiceStub) -> None:
    below = check(fraud, amount=Money(amount_minor=999_999, currency="EUR"))
    at = check(fraud, amount=Money(amount_minor=1_000_000, currency="EUR"))
    assert fired(below, LARGE_AMOUNT) is None
    hit = fired(at, LARGE_AMOUNT)
    assert hit is not None and hit.confidence == 5000 and hit.contribution == hit.weight // 2


def test_location_rule_fires_for_a_listed_country(fraud: FraudServiceStub, test_rules: Any) -> None:
    rule = test_rules(
        pb.FraudRule(
            name="location",
            rule_type=pb.RULE_TYPE_LOCATION,
            weight=3000,
            location=pb.LocationParameters(country_codes=[TEST_COUNTRY]),
        )
    )
    there = check(fraud, geo=pb.GeoLocation(country_code=TEST_COUNTRY))
    elsewhere = check(fraud, geo=pb.GeoLocation(country_code="DE"))
    hit = fired(there, rule.rule_id)
    assert hit is not None and hit.contribution == 3000 and there.country_code == TEST_COUNTRY
    assert fired(elsewhere, rule.rule_id) is None


def test_impossible_travel_between_consecutive_payments(fraud: FraudServiceStub) -> None:
    user = str(uuid.uuid4())
    now = datetime.now(UTC)
    berlin = pb.GeoLocation(country_code="DE", latitude=52.52, longitude=13.40)
    new_york = pb.GeoLocation(country_code="US", latitude=40.71, longitude=-74.01)
    first = check(fraud, user_id=user, geo=berlin, occur_time=ts(now - timedelta(hours=1)))
    second = check(fraud, user_id=user, geo=new_york, occur_time=ts(now))
    assert fired(first, IMPOSSIBLE_TRAVEL) is None
    hit = fired(second, IMPOSSIBLE_TRAVEL)
    assert hit is not None and "km from this user's previous transaction 60 min earlier" in hit.reason
    # Ten hours is enough to fly it: another user making the same trip slowly is fine.
    slow = str(uuid.uuid4())
    check(fraud, user_id=slow, geo=berlin, occur_time=ts(now - timedelta(hours=10)))
    assert fired(check(fraud, user_id=slow, geo=new_york, occur_time=ts(now)), IMPOSSIBLE_TRAVEL) is None


def test_device_shared_by_many_users_fires(fraud: FraudServiceStub) -> None:
    device = f"device-{uuid.uuid4()}"
    five = [check(fraud, device_fingerprint=device) for _ in range(5)]
    sixth = check(fraud, device_fingerprint=device)
    assert not any(fired(c, SHARED_DEVICE) for c in five)
    hit = fired(sixth, SHARED_DEVICE)
    assert hit is not None and "6 users on this device" in hit.reason
    # The same user again on that device adds no user.
    again = check(fraud, device_fingerprint=device, user_id=sixth.user_id)
    assert "6 users on this device" in (fired(again, SHARED_DEVICE) or pb.FiredRule()).reason


def test_device_rule_can_fire_on_a_missing_fingerprint(fraud: FraudServiceStub, test_rules: Any) -> None:
    # Every transaction without a device matches this rule, not only the test's: weight 1
    # changes nobody's decision, and it is disabled as soon as it has been seen to work.
    rule = test_rules(
        pb.FraudRule(
            name="no device",
            rule_type=pb.RULE_TYPE_DEVICE,
            weight=1,
            device=pb.DeviceParameters(
                max_users_per_device=1000, window=duration(60), fire_on_missing_fingerprint=True
            ),
        )
    )
    try:
        without = check(fraud, device_fingerprint="")
        with_device = check(fraud)
    finally:
        fraud.DisableFraudRule(pb.DisableFraudRuleRequest(rule_id=rule.rule_id, reason="seen"))
    hit = fired(without, rule.rule_id)
    assert hit is not None and hit.reason == "the transaction carries no device fingerprint"
    assert hit.confidence == 10000 and hit.contribution == 1
    assert fired(with_device, rule.rule_id) is None


@pytest.mark.parametrize(
    ("entry_type", "make"),
    [
        (pb.BLACKLIST_ENTRY_TYPE_USER, lambda r: (r.user_id, {})),
        (pb.BLACKLIST_ENTRY_TYPE_EMAIL_DOMAIN, lambda r: (r.email.split("@")[1], {})),
        (pb.BLACKLIST_ENTRY_TYPE_DEVICE, lambda r: (r.device_fingerprint, {})),
        (pb.BLACKLIST_ENTRY_TYPE_IP, lambda r: (r.ip_address, {})),
        (
            pb.BLACKLIST_ENTRY_TYPE_IP_RANGE,
            lambda r: (str(ipaddress.ip_network(f"{r.ip_address}/64", strict=False)), {}),
        ),
        (pb.BLACKLIST_ENTRY_TYPE_CARD_FINGERPRINT, lambda r: (r.card_fingerprint, {})),
    ],
)
def test_blacklisted_identifiers_decline(fraud: FraudServiceStub, entry_type: int, make: Any) -> None:
    req = request(ip_address=f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::1")
    value, _ = make(req)
    entry = fraud.AddBlacklistEntry(
        pb.AddBlacklistEntryRequest(entry_type=entry_type, value=value, reason="integration test")  # type: ignore[arg-type]
    ).blacklist_entry
    try:
        c = fraud.CheckTransaction(req).fraud_check
        hit = fired(c, BLACKLIST)
        assert hit is not None and "is blacklisted (integration test)" in hit.reason
        assert c.decision == pb.DECISION_DECLINE and c.risk_score == 10000
    finally:
        fraud.RemoveBlacklistEntry(pb.RemoveBlacklistEntryRequest(entry_id=entry.entry_id))
    after = check(
        fraud,
        **{
            f: getattr(req, f)
            for f in ("user_id", "email", "device_fingerprint", "ip_address", "card_fingerprint")
        },
    )
    assert fired(after, BLACKLIST) is None


def test_pattern_flags_an_amount_far_above_the_users_history(fraud: FraudServiceStub) -> None:
    user = str(uuid.uuid4())
    history = [
        check(fraud, user_id=user, amount=Money(amount_minor=1000 + i, currency="EUR")) for i in range(10)
    ]
    assert not any(fired(c, PATTERN) for c in history)
    usual = check(fraud, user_id=user, amount=Money(amount_minor=1005, currency="EUR"))
    outlier = check(fraud, user_id=user, amount=Money(amount_minor=90_000, currency="EUR"))
    assert fired(usual, PATTERN) is None
    hit = fired(outlier, PATTERN)
    assert hit is not None and "standard deviations above this user's mean" in hit.reason


def test_kyc_limit_for_the_users_level(fraud: FraudServiceStub) -> None:
    # Unknown to the users service (or while it does not answer), the caller's level counts.
    over = check(fraud, kyc_level=0, amount=Money(amount_minor=150_000, currency="EUR"))
    within = check(fraud, kyc_level=0, amount=Money(amount_minor=50_000, currency="EUR"))
    hit = fired(over, KYC_LIMITS)
    assert hit is not None and "exceeds the single limit" in hit.reason and "KYC level 0" in hit.reason
    assert fired(within, KYC_LIMITS) is None
    kyc_entries = [f for f in over.fired_rules if f.rule_id == KYC_LIMITS]
    # Degraded exactly when the users service could not say: then the reason says so.
    assert kyc_entries[0].degraded == ("users service answered" in kyc_entries[0].reason)


def register_user(users: UserServiceStub, country_code: str = "DE") -> str:
    request = users_pb.RegisterUserRequest(
        email=f"fraud-{uuid.uuid4().hex[:12]}@example.com",
        phone=f"+4915{secrets.randbelow(10**9):09d}",
        password=secrets.token_urlsafe(16),
        display_name="Fraud Test",
        country_code=country_code,
    )
    for attempt in range(20):  # the users process may be restarting (UNAVAILABLE)
        try:
            return users.RegisterUser(request).user.user_id  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 19:  # type: ignore[attr-defined]
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


def test_kyc_limit_takes_the_level_from_the_users_service(
    fraud: FraudServiceStub, channel: Callable[[str], grpc.Channel]
) -> None:
    user = register_user(UserServiceStub(channel("users")))  # a new user is at KYC level 0
    # The caller claims level 2; the users service's level 0 is what counts.
    c = check(fraud, user_id=user, kyc_level=2, amount=Money(amount_minor=150_000, currency="EUR"))
    hit = fired(c, KYC_LIMITS)
    assert hit is not None and "KYC level 0" in hit.reason and not hit.degraded


# -- country of the user's profile, new device ---------------------------------------------
def test_country_differing_from_the_users_profile_fires(
    fraud: FraudServiceStub, channel: Callable[[str], grpc.Channel]
) -> None:
    user = register_user(UserServiceStub(channel("users")), country_code="DE")
    abroad = check(fraud, user_id=user, geo=pb.GeoLocation(country_code="FR"))
    hit = fired(abroad, COUNTRY_MISMATCH)
    assert hit is not None and hit.reason == "payment from FR, the user's profile says DE"
    assert not hit.degraded and hit.contribution == hit.weight and hit.contribution < abroad.review_threshold
    at_home = check(fraud, user_id=user, geo=pb.GeoLocation(country_code="DE"))
    no_country = check(fraud, user_id=user)
    # Not even listed: with nothing to compare, the rule stays silent (and is not degraded).
    assert not [f for f in at_home.fired_rules if f.rule_id == COUNTRY_MISMATCH]
    assert not [f for f in no_country.fired_rules if f.rule_id == COUNTRY_MISMATCH]
    # A user the users service does not know has no profile country to differ from.
    unknown = check(fraud, user_id=str(uuid.uuid4()), geo=pb.GeoLocation(country_code="FR"))
    assert not [f for f in unknown.fired_rules if f.rule_id == COUNTRY_MISMATCH]
    # A guest neither.
    guest = check(fraud, user_id="", geo=pb.GeoLocation(country_code="FR"))
    assert not [f for f in guest.fired_rules if f.rule_id == COUNTRY_MISMATCH]


def test_a_device_new_to_the_user_fires_once_per_user(fraud: FraudServiceStub) -> None:
    device = f"device-{uuid.uuid4()}"
    first_user, second_user = str(uuid.uuid4()), str(uuid.uuid4())
    first = check(fraud, user_id=first_user, device_fingerprint=device)
    hit = fired(first, NEW_DEVICE)
    assert hit is not None and hit.reason == "first payment from this device for this user"
    assert hit.contribution == hit.weight < first.review_threshold and first.decision == pb.DECISION_APPROVE
    again = check(fraud, user_id=first_user, device_fingerprint=device)
    assert not [f for f in again.fired_rules if f.rule_id == NEW_DEVICE]
    other_user = check(fraud, user_id=second_user, device_fingerprint=device)
    assert fired(other_user, NEW_DEVICE) is not None
    other_device = check(fraud, user_id=first_user, device_fingerprint=f"device-{uuid.uuid4()}")
    assert fired(other_device, NEW_DEVICE) is not None
    # Without a user or without a device there is nothing to remember.
    assert fired(check(fraud, user_id="", device_fingerprint=device), NEW_DEVICE) is None
    assert fired(check(fraud, user_id=first_user, device_fingerprint=""), NEW_DEVICE) is None


def test_a_device_last_used_before_the_window_is_new_again(fraud: FraudServiceStub) -> None:
    user, device = str(uuid.uuid4()), f"device-{uuid.uuid4()}"
    now = datetime.now(UTC)
    check(fraud, user_id=user, device_fingerprint=device, occur_time=ts(now - timedelta(days=31)))
    hit = fired(check(fraud, user_id=user, device_fingerprint=device, occur_time=ts(now)), NEW_DEVICE)
    assert hit is not None and hit.reason == "first payment from this device for this user in the last 30d"


def test_a_declined_attempt_does_not_make_a_device_known(fraud: FraudServiceStub) -> None:
    user, device, card = str(uuid.uuid4()), f"device-{uuid.uuid4()}", fingerprint()
    entry = fraud.AddBlacklistEntry(
        pb.AddBlacklistEntryRequest(
            entry_type=pb.BLACKLIST_ENTRY_TYPE_CARD_FINGERPRINT, value=card, reason="integration test"
        )
    ).blacklist_entry
    try:
        declined = check(fraud, user_id=user, device_fingerprint=device, card_fingerprint=card)
    finally:
        fraud.RemoveBlacklistEntry(pb.RemoveBlacklistEntryRequest(entry_id=entry.entry_id))
    assert declined.decision == pb.DECISION_DECLINE and fired(declined, NEW_DEVICE) is not None
    after = check(fraud, user_id=user, device_fingerprint=device)
    assert after.decision == pb.DECISION_APPROVE and fired(after, NEW_DEVICE) is not None
    assert fired(check(fraud, user_id=user, device_fingerprint=device), NEW_DEVICE) is None


def test_rules_need_something_to_match(fraud: FraudServiceStub) -> None:
    empty_location = pb.FraudRule(
        name=f"test: nothing {uuid.uuid4().hex[:8]}",
        rule_type=pb.RULE_TYPE_LOCATION,
        weight=0,
        location=pb.LocationParameters(),
    )
    empty_device = pb.FraudRule(
        name=f"test: nothing {uuid.uuid4().hex[:8]}",
        rule_type=pb.RULE_TYPE_DEVICE,
        weight=0,
        device=pb.DeviceParameters(window=duration(60)),
    )
    for bad in (empty_location, empty_device):
        create = pb.CreateFraudRuleRequest(fraud_rule=bad)
        code, reason, _ = failure(lambda create=create: fraud.CreateFraudRule(create))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    # A flag alone is enough. These rules would match everybody's traffic: weight 0 changes
    # no score, and they are disabled as soon as they have been read back.
    flags_only = [
        pb.FraudRule(
            name=f"test: mismatch only {uuid.uuid4().hex[:8]}",
            rule_type=pb.RULE_TYPE_LOCATION,
            weight=0,
            location=pb.LocationParameters(fire_on_profile_country_mismatch=True),
        ),
        pb.FraudRule(
            name=f"test: new device only {uuid.uuid4().hex[:8]}",
            rule_type=pb.RULE_TYPE_DEVICE,
            weight=0,
            device=pb.DeviceParameters(window=duration(60), fire_on_new_device_for_user=True),
        ),
    ]
    for rule in flags_only:
        made = fraud.CreateFraudRule(pb.CreateFraudRuleRequest(fraud_rule=rule)).fraud_rule
        fraud.DisableFraudRule(pb.DisableFraudRuleRequest(rule_id=made.rule_id, reason="test finished"))
        stored = fraud.GetFraudRule(pb.GetFraudRuleRequest(rule_id=made.rule_id)).fraud_rule
        assert (stored.location, stored.device) == (rule.location, rule.device)


# -- thresholds ---------------------------------------------------------------------------
@pytest.fixture
def thresholds(fraud: FraudServiceStub) -> Iterator[Callable[[int, int], None]]:
    original = fraud.GetFraudThresholds(pb.GetFraudThresholdsRequest()).fraud_thresholds

    def set_to(review: int, decline: int) -> None:
        current = fraud.GetFraudThresholds(pb.GetFraudThresholdsRequest()).fraud_thresholds
        fraud.UpdateFraudThresholds(
            pb.UpdateFraudThresholdsRequest(
                review_threshold=review,
                decline_threshold=decline,
                degraded_minimum_decision=original.degraded_minimum_decision,
                version=current.version,
            )
        )

    try:
        yield set_to
    finally:
        set_to(original.review_threshold, original.decline_threshold)


def test_thresholds_edges_decide(fraud: FraudServiceStub, test_rules: Any, thresholds: Any) -> None:
    test_rules(amount_rule(threshold=100, weight=4000))  # at the threshold: contributes 2000
    xpt = Money(amount_minor=100, currency=TEST_CURRENCY)

    def only_the_test_rule() -> pb.FraudCheck:
        # No device, so the default new-device rule (a fresh user's first payment) adds
        # nothing: the score is exactly the test rule's.
        return check(fraud, amount=xpt, device_fingerprint="")

    thresholds(2001, 9000)
    assert only_the_test_rule().decision == pb.DECISION_APPROVE
    thresholds(2000, 9000)
    at_review = only_the_test_rule()
    assert (at_review.risk_score, at_review.decision) == (2000, pb.DECISION_REVIEW)
    assert at_review.review_threshold == 2000
    thresholds(1000, 2000)
    assert only_the_test_rule().decision == pb.DECISION_DECLINE
    thresholds(1000, 2001)
    assert only_the_test_rule().decision == pb.DECISION_REVIEW


def test_thresholds_update_needs_the_current_version(fraud: FraudServiceStub) -> None:
    current = fraud.GetFraudThresholds(pb.GetFraudThresholdsRequest()).fraud_thresholds
    code, reason, _ = failure(
        lambda: fraud.UpdateFraudThresholds(
            pb.UpdateFraudThresholdsRequest(
                review_threshold=1, decline_threshold=2, version=current.version + 100
            )
        )
    )
    assert (code, reason) == (grpc.StatusCode.ABORTED, "VERSION_CONFLICT")
    assert fraud.GetFraudThresholds(pb.GetFraudThresholdsRequest()).fraud_thresholds == current
    code, reason, fields = failure(
        lambda: fraud.UpdateFraudThresholds(
            pb.UpdateFraudThresholdsRequest(
                review_threshold=9000, decline_threshold=8000, version=current.version
            )
        )
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert fraud.GetFraudThresholds(pb.GetFraudThresholdsRequest()).fraud_thresholds == current


# -- rule changes at run time -------------------------------------------------------------
def test_rule_changes_reach_checks_without_a_restart(fraud: FraudServiceStub, test_rules: Any) -> None:
    rule = test_rules(amount_rule(threshold=100, weight=4000))
    xpt = Money(amount_minor=200, currency=TEST_CURRENCY)  # twice the threshold: full confidence

    def contribution() -> int:
        hit = fired(check(fraud, amount=xpt), rule.rule_id)
        return hit.contribution if hit else 0

    assert eventually(lambda: contribution() == 4000)
    updated = fraud.UpdateFraudRule(
        pb.UpdateFraudRuleRequest(
            rule_id=rule.rule_id,
            fraud_rule=pb.FraudRule(weight=1500),
            update_mask=FieldMask(paths=["weight"]),
            version=rule.version,
        )
    ).fraud_rule
    assert (updated.weight, updated.version, updated.amount) == (1500, rule.version + 1, rule.amount)
    assert eventually(lambda: contribution() == 1500)
    raised = fraud.UpdateFraudRule(
        pb.UpdateFraudRuleRequest(
            rule_id=rule.rule_id,
            fraud_rule=pb.FraudRule(
                amount=pb.AmountParameters(thresholds=[Money(amount_minor=500, currency=TEST_CURRENCY)])
            ),
            update_mask=FieldMask(paths=["amount"]),
            version=updated.version,
        )
    ).fraud_rule
    assert eventually(lambda: contribution() == 0)
    disabled = fraud.DisableFraudRule(
        pb.DisableFraudRuleRequest(rule_id=rule.rule_id, reason="test")
    ).fraud_rule
    assert disabled.state == pb.FraudRule.STATE_DISABLED and disabled.version == raised.version + 1
    again = fraud.DisableFraudRule(pb.DisableFraudRuleRequest(rule_id=rule.rule_id, reason="test")).fraud_rule
    assert again == disabled
    big = Money(amount_minor=10_000, currency=TEST_CURRENCY)
    assert eventually(lambda: fired(check(fraud, amount=big), rule.rule_id) is None)
    enabled = fraud.EnableFraudRule(pb.EnableFraudRuleRequest(rule_id=rule.rule_id)).fraud_rule
    assert enabled.state == pb.FraudRule.STATE_ENABLED
    assert eventually(lambda: fired(check(fraud, amount=big), rule.rule_id) is not None)


def test_rule_update_refusals_change_nothing(fraud: FraudServiceStub, test_rules: Any) -> None:
    rule = test_rules(amount_rule(threshold=100, weight=4000))

    def update(mask: list[str], version: int, **fields: Any) -> Callable[[], object]:
        return lambda: fraud.UpdateFraudRule(
            pb.UpdateFraudRuleRequest(
                rule_id=rule.rule_id,
                fraud_rule=pb.FraudRule(**fields),
                update_mask=FieldMask(paths=mask),
                version=version,
            )
        )

    stale = failure(update(["weight"], rule.version + 1, weight=1))
    assert stale[:2] == (grpc.StatusCode.ABORTED, "VERSION_CONFLICT")
    wrong_type = failure(
        update(["location"], rule.version, location=pb.LocationParameters(country_codes=[TEST_COUNTRY]))
    )
    assert wrong_type == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", ["update_mask"])
    unset = failure(update(["amount"], rule.version))
    assert unset == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", ["fraud_rule.amount"])
    bad_weight = failure(update(["weight"], rule.version, weight=10_001))
    assert bad_weight[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert fraud.GetFraudRule(pb.GetFraudRuleRequest(rule_id=rule.rule_id)).fraud_rule == rule
    missing = str(uuid.uuid4())
    assert failure(lambda: fraud.GetFraudRule(pb.GetFraudRuleRequest(rule_id=missing)))[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "RULE_NOT_FOUND",
    )


def test_create_rule_refuses_parameters_of_another_type(fraud: FraudServiceStub) -> None:
    before = fraud.ListFraudRules(pb.ListFraudRulesRequest(page_size=100)).fraud_rules
    bad = pb.FraudRule(
        name=f"test: mismatched {uuid.uuid4()}",
        rule_type=pb.RULE_TYPE_VELOCITY,
        weight=100,
        location=pb.LocationParameters(country_codes=[TEST_COUNTRY]),
    )
    code, reason, _ = failure(lambda: fraud.CreateFraudRule(pb.CreateFraudRuleRequest(fraud_rule=bad)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    after = fraud.ListFraudRules(pb.ListFraudRulesRequest(page_size=100)).fraud_rules
    assert bad.name not in {r.name for r in after} and len(after) >= len(before)


def test_rules_are_listed_oldest_first_a_page_at_a_time(fraud: FraudServiceStub) -> None:
    first = fraud.ListFraudRules(pb.ListFraudRulesRequest(page_size=2))
    assert len(first.fraud_rules) == 2 and first.next_page_token
    second = fraud.ListFraudRules(pb.ListFraudRulesRequest(page_size=2, page_token=first.next_page_token))
    ids = [r.rule_id for r in first.fraud_rules] + [r.rule_id for r in second.fraud_rules]
    assert len(set(ids)) == 4 and ids[0] == BLACKLIST
    enabled_velocity = fraud.ListFraudRules(
        pb.ListFraudRulesRequest(
            rule_type=pb.RULE_TYPE_VELOCITY, state=pb.FraudRule.STATE_ENABLED, page_size=100
        )
    ).fraud_rules
    assert USER_HOURLY in {r.rule_id for r in enabled_velocity}
    assert {r.rule_type for r in enabled_velocity} == {pb.RULE_TYPE_VELOCITY}
    code, reason, fields = failure(
        lambda: fraud.ListFraudRules(pb.ListFraudRulesRequest(page_token="not-a-token"))
    )
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", ["page_token"])


# -- idempotency --------------------------------------------------------------------------
def test_a_retry_returns_the_recorded_check_and_counts_once(fraud: FraudServiceStub) -> None:
    user = str(uuid.uuid4())
    for _ in range(10):
        req = request(user_id=user)
        first = fraud.CheckTransaction(req).fraud_check
        retry = fraud.CheckTransaction(req).fraud_check
        assert retry == first
    # Ten transactions, each sent twice: still within "more than 10 per hour".
    tenth_retry_free = check(fraud, user_id=user)
    hit = fired(tenth_retry_free, USER_HOURLY)
    assert hit is not None and "11 transactions" in hit.reason


def test_concurrent_first_attempts_record_one_check(fraud: FraudServiceStub) -> None:
    req = request()
    with ThreadPoolExecutor(8) as pool:
        checks = list(pool.map(lambda _: fraud.CheckTransaction(req).fraud_check, range(8)))
    assert len({c.check_id for c in checks}) == 1
    listed = fraud.ListFraudChecks(pb.ListFraudChecksRequest(transaction_id=req.transaction_id)).fraud_checks
    assert [c.check_id for c in listed] == [checks[0].check_id]


def test_the_same_reference_with_another_request_is_refused(fraud: FraudServiceStub) -> None:
    req = request()
    first = fraud.CheckTransaction(req).fraud_check
    changed = pb.CheckTransactionRequest()
    changed.CopyFrom(req)
    changed.amount.amount_minor += 1
    code, reason, _ = failure(lambda: fraud.CheckTransaction(changed))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_MISMATCH")
    listed = fraud.ListFraudChecks(pb.ListFraudChecksRequest(transaction_id=req.transaction_id)).fraud_checks
    assert [c.check_id for c in listed] == [first.check_id] and listed[0].amount.amount_minor == 1500


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"card_fingerprint": ""}, ""),  # a card payment without its card
        ({"ip_address": "999.1.1.1"}, "ip_address"),
        ({"amount": Money(amount_minor=0, currency="EUR")}, "amount"),
        ({"geo": pb.GeoLocation(country_code="DE", latitude=10.0)}, "geo"),
        ({"user_id": "not-a-uuid"}, "user_id"),
    ],
)
def test_bad_check_requests_are_refused_and_record_nothing(
    fraud: FraudServiceStub, changes: dict[str, Any], field: str
) -> None:
    req = request(**changes)
    code, reason, fields = failure(lambda: fraud.CheckTransaction(req))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert field in fields or (field == "" and fields)
    listed = fraud.ListFraudChecks(pb.ListFraudChecksRequest(transaction_id=req.transaction_id)).fraud_checks
    assert list(listed) == []


def test_unknown_ids_are_not_found(fraud: FraudServiceStub) -> None:
    missing = str(uuid.uuid4())
    assert failure(lambda: fraud.GetFraudCheck(pb.GetFraudCheckRequest(check_id=missing)))[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "FRAUD_CHECK_NOT_FOUND",
    )
    assert failure(lambda: fraud.RemoveBlacklistEntry(pb.RemoveBlacklistEntryRequest(entry_id=missing)))[
        :2
    ] == (
        grpc.StatusCode.NOT_FOUND,
        "BLACKLIST_ENTRY_NOT_FOUND",
    )
    assert failure(lambda: fraud.ReportFraud(pb.ReportFraudRequest(payment_id=missing, reason="chargeback")))[
        :2
    ] == (
        grpc.StatusCode.NOT_FOUND,
        "FRAUD_CHECK_NOT_FOUND",
    )


def test_blacklist_duplicates_and_bad_values_are_refused(fraud: FraudServiceStub) -> None:
    card = fingerprint()
    entry = fraud.AddBlacklistEntry(
        pb.AddBlacklistEntryRequest(
            entry_type=pb.BLACKLIST_ENTRY_TYPE_CARD_FINGERPRINT, value=card, reason="stolen"
        )
    ).blacklist_entry
    try:
        duplicate = failure(
            lambda: fraud.AddBlacklistEntry(
                pb.AddBlacklistEntryRequest(
                    entry_type=pb.BLACKLIST_ENTRY_TYPE_CARD_FINGERPRINT, value=card, reason="again"
                )
            )
        )
        assert duplicate[:2] == (grpc.StatusCode.ALREADY_EXISTS, "BLACKLIST_ENTRY_EXISTS")
        bad_range = failure(
            lambda: fraud.AddBlacklistEntry(
                pb.AddBlacklistEntryRequest(
                    entry_type=pb.BLACKLIST_ENTRY_TYPE_IP_RANGE, value="10.0.0.1/8", reason="x"
                )
            )
        )
        assert bad_range[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        listed = fraud.ListBlacklistEntries(
            pb.ListBlacklistEntriesRequest(entry_type=pb.BLACKLIST_ENTRY_TYPE_CARD_FINGERPRINT, page_size=100)
        ).blacklist_entries
        assert [e.reason for e in listed if e.value == card] == ["stolen"]
    finally:
        fraud.RemoveBlacklistEntry(pb.RemoveBlacklistEntryRequest(entry_id=entry.entry_id))
    # Removing again succeeds again.
    fraud.RemoveBlacklistEntry(pb.RemoveBlacklistEntryRequest(entry_id=entry.entry_id))


# -- fraud reports ------------------------------------------------------------------------
def test_report_fraud_confirms_the_check_and_blacklists_card_and_device(fraud: FraudServiceStub) -> None:
    req = request()
    c = fraud.CheckTransaction(req).fraud_check
    assert c.decision == pb.DECISION_APPROVE
    report = fraud.ReportFraud(pb.ReportFraudRequest(payment_id=req.transaction_id, reason="chargeback 4837"))
    try:
        assert report.fraud_check.check_id == c.check_id and report.fraud_check.confirmed_fraud
        assert report.fraud_check.HasField("report_time")
        values = {(e.entry_type, e.value, e.source, e.payment_id) for e in report.blacklist_entries}
        assert values == {
            (
                pb.BLACKLIST_ENTRY_TYPE_CARD_FINGERPRINT,
                req.card_fingerprint,
                pb.BlacklistEntry.SOURCE_FRAUD_REPORT,
                req.transaction_id,
            ),
            (
                pb.BLACKLIST_ENTRY_TYPE_DEVICE,
                req.device_fingerprint,
                pb.BlacklistEntry.SOURCE_FRAUD_REPORT,
                req.transaction_id,
            ),
        }
        again = fraud.ReportFraud(
            pb.ReportFraudRequest(payment_id=req.transaction_id, reason="chargeback 4837")
        )
        assert again == report
        next_attempt = check(fraud, card_fingerprint=req.card_fingerprint)
        assert next_attempt.decision == pb.DECISION_DECLINE and fired(next_attempt, BLACKLIST) is not None
    finally:
        for e in report.blacklist_entries:
            fraud.RemoveBlacklistEntry(pb.RemoveBlacklistEntryRequest(entry_id=e.entry_id))


# -- Idempotency-Key on the creating admin RPCs -------------------------------------------
def test_create_rule_with_an_idempotency_key_replays(fraud: FraudServiceStub) -> None:
    rule = amount_rule(threshold=100, weight=1)
    rule.name = f"test: idempotent {uuid.uuid4().hex[:8]}"
    key = (("idempotency-key", f"test-{uuid.uuid4()}"),)
    first = fraud.CreateFraudRule(pb.CreateFraudRuleRequest(fraud_rule=rule), metadata=key).fraud_rule
    try:
        again = fraud.CreateFraudRule(pb.CreateFraudRuleRequest(fraud_rule=rule), metadata=key).fraud_rule
        assert again == first
        other = pb.FraudRule()
        other.CopyFrom(rule)
        other.weight = 2
        code, reason, _ = failure(
            lambda: fraud.CreateFraudRule(pb.CreateFraudRuleRequest(fraud_rule=other), metadata=key)
        )
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_MISMATCH")
        # Every page: a mesh that ran the benchmark (20 rules a run) has more than one.
        named, token = [], ""
        while True:
            page = fraud.ListFraudRules(
                pb.ListFraudRulesRequest(rule_type=pb.RULE_TYPE_AMOUNT, page_size=100, page_token=token)
            )
            named += [r.rule_id for r in page.fraud_rules if r.name == rule.name]
            if not (token := page.next_page_token):
                break
        assert named == [first.rule_id]
    finally:
        fraud.DisableFraudRule(pb.DisableFraudRuleRequest(rule_id=first.rule_id, reason="test finished"))


def test_add_blacklist_entry_with_an_idempotency_key_replays(fraud: FraudServiceStub) -> None:
    add = pb.AddBlacklistEntryRequest(
        entry_type=pb.BLACKLIST_ENTRY_TYPE_DEVICE, value=f"device-{uuid.uuid4()}", reason="test"
    )
    key = (("idempotency-key", f"test-{uuid.uuid4()}"),)
    first = fraud.AddBlacklistEntry(add, metadata=key).blacklist_entry
    try:
        assert fraud.AddBlacklistEntry(add, metadata=key).blacklist_entry == first
        without_key = failure(lambda: fraud.AddBlacklistEntry(add))
        assert without_key[:2] == (grpc.StatusCode.ALREADY_EXISTS, "BLACKLIST_ENTRY_EXISTS")
    finally:
        fraud.RemoveBlacklistEntry(pb.RemoveBlacklistEntryRequest(entry_id=first.entry_id))
