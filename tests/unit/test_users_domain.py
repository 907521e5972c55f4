"""The users domain and its pure helpers: KYC levels and limits, profile updates and
optimistic locking, erasure, session states, the throttling refusal's details, where a
call comes from, and key rotation of the access-token issuer."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import code_pb2, error_details_pb2

from services.framework.edge_context import client_ip, forwarder, peer_ip
from services.framework.identity import Caller
from services.framework.topology import GATEWAY, OPERATOR
from services.users.adapters.tokens import TokenIssuer
from services.users.domain.model import (
    DocumentType,
    SessionRecord,
    SessionState,
    StaleProfileVersion,
    TooManyLoginAttempts,
    User,
    UserNotActive,
    check_can_change,
    check_version,
    erased,
    kyc_level,
    limits_for,
    profile_changes,
)
from services.users.entrypoints.callers import actor

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def a_user(**changes: object) -> User:
    user = User(
        user_id=uuid.uuid4(),
        email="Ada@Example.COM",
        phone="+4915112345678",
        state="ACTIVE",
        kyc_level=0,
        display_name="Ada",
        country_code="DE",
        preferred_language="en",
        profile_version=3,
        created_at=NOW,
        updated_at=NOW,
    )
    return replace(user, **changes)  # type: ignore[arg-type]


def pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("verified", "level"),
    [
        ([], 0),
        ([DocumentType.PROOF_OF_ADDRESS], 0),
        ([DocumentType.PASSPORT], 1),
        ([DocumentType.DRIVING_LICENCE, DocumentType.NATIONAL_ID], 1),
        ([DocumentType.NATIONAL_ID, DocumentType.PROOF_OF_ADDRESS], 2),
    ],
)
def test_the_kyc_level_follows_the_verified_documents(verified: list[DocumentType], level: int) -> None:
    assert kyc_level(verified) == level


def test_limits_grow_with_the_level_and_are_integer_minor_units() -> None:
    by_level = [{lim.currency: lim for lim in limits_for(level)} for level in (0, 1, 2)]
    for currency in ("EUR", "USD", "GBP"):
        per_tx = [levels[currency].per_transaction for levels in by_level]
        assert per_tx == sorted(per_tx) and len(set(per_tx)) == 3
        for levels in by_level:
            lim = levels[currency]
            assert all(isinstance(v, int) for v in (lim.per_transaction, lim.daily, lim.monthly))
            assert lim.per_transaction <= lim.daily <= lim.monthly


def test_profile_changes_follow_the_mask_and_skip_unchanged_fields() -> None:
    user = a_user()
    values = {"display_name": "Ada L.", "country_code": "", "preferred_language": "en"}
    assert profile_changes(user, values, []) == {"display_name": "Ada L."}  # empty mask: the non-empty ones
    assert profile_changes(user, values, ["country_code"]) == {"country_code": ""}  # named: cleared
    assert profile_changes(user, values, ["preferred_language"]) == {}  # same value: nothing to change


def test_a_stale_version_is_refused_with_the_current_one() -> None:
    user = a_user()
    check_version(user, 3)
    with pytest.raises(StaleProfileVersion) as err:
        check_version(user, 2)
    assert err.value.code == grpc.StatusCode.ABORTED
    assert err.value.metadata["current_version"] == "3"


@pytest.mark.parametrize("state", ["DELETED", "ERASED"])
def test_deleted_and_erased_users_cannot_change(state: str) -> None:
    check_can_change(a_user(state="SUSPENDED"))
    with pytest.raises(UserNotActive):
        check_can_change(a_user(state=state))


def test_erasure_empties_every_personal_field_and_keeps_the_id() -> None:
    user = a_user(kyc_level=2)
    gone = erased(user)
    assert (gone.user_id, gone.kyc_level, gone.state) == (user.user_id, 2, "ERASED")
    assert (gone.email, gone.phone, gone.display_name, gone.country_code, gone.preferred_language) == (
        "",
    ) * 5
    assert gone.email_domain == "" and user.email_domain == "example.com"


def test_a_session_is_revoked_expired_or_active() -> None:
    session = SessionRecord(uuid.uuid4(), uuid.uuid4(), "", "", NOW, None, NOW + timedelta(days=1), None)
    assert session.state(NOW) is SessionState.ACTIVE
    assert session.state(NOW + timedelta(days=2)) is SessionState.EXPIRED
    assert replace(session, revoked_at=NOW).state(NOW) is SessionState.REVOKED


def test_too_many_attempts_carries_retry_info_and_the_delay_in_error_info() -> None:
    status = TooManyLoginAttempts(120, "account").to_status("users.interpay.dev")
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and status.details[1].Unpack(retry)
    assert (info.reason, info.metadata["retry_after_seconds"], retry.retry_delay.seconds) == (
        "RATE_LIMITED",
        "120",
        120,
    )


def test_the_source_address_is_the_forwarders_say_else_the_peer() -> None:
    assert peer_ip("ipv4:10.1.2.3:5555") == "10.1.2.3"
    assert peer_ip("ipv6:[::1]:5555") == "::1"
    assert peer_ip("unix:/tmp/socket") == ""
    peer = "ipv4:127.0.0.1:5000"
    both = [("x-envoy-external-address", "198.51.100.2"), ("x-forwarded-for", "203.0.113.7")]
    gateway, operator = Caller(GATEWAY, True), Caller(OPERATOR, True)
    assert forwarder(gateway) and forwarder(operator)
    # Only the gateway and the operator's tooling may say who the client is ...
    assert client_ip(both, peer, forwarder(gateway)) == "198.51.100.2"
    assert client_ip([("x-forwarded-for", "203.0.113.7, 10.0.0.1")], peer, True) == "203.0.113.7"
    assert client_ip([("x-forwarded-for", "not an ip")], peer, True) == "127.0.0.1"
    assert client_ip([], peer, True) == "127.0.0.1"
    # ... a peer service, an unverified caller or a forged name cannot.
    for caller in (Caller("payments", True), Caller(GATEWAY, False), Caller("ipv4:127.0.0.1:1", False)):
        assert not forwarder(caller)
        assert client_ip(both, peer, forwarder(caller)) == "127.0.0.1"


def test_the_actor_is_the_user_of_a_valid_token_only() -> None:
    issuer, stranger = TokenIssuer(pem()), TokenIssuer(pem())
    user = uuid.uuid4()
    assert actor({"authorization": f"Bearer {issuer.issue(user)}"}, issuer) == f"user:{user}"
    assert actor({"authorization": f"Bearer {stranger.issue(user)}"}, issuer) == "anonymous"
    assert actor({"authorization": "Bearer garbage"}, issuer) == "anonymous"
    assert actor({}, issuer) == "anonymous"


def test_a_rotated_key_keeps_verifying_its_tokens_during_the_overlap() -> None:
    old_pem, new_pem = pem(), pem()
    old = TokenIssuer(old_pem)
    token = old.issue(uuid.uuid4())
    rotated = TokenIssuer(new_pem, retired_key_pems=[old_pem])
    assert [k["kid"] for k in rotated.jwks] == [rotated.kid, old.kid]  # both published, new first
    assert jwt.get_unverified_header(rotated.issue(uuid.uuid4()))["kid"] == rotated.kid  # signs with the new
    assert rotated.verify(token)["sub"] == old.verify(token)["sub"]
    # A public key alone is enough to keep verifying.
    public_pem = old.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert TokenIssuer(new_pem, retired_key_pems=[public_pem]).verify(token)["iss"]
    # Once retired keys are dropped, their tokens stop verifying.
    with pytest.raises(jwt.InvalidTokenError):
        TokenIssuer(new_pem).verify(token)
    with pytest.raises(jwt.ExpiredSignatureError):
        rotated.verify(old.issue(uuid.uuid4(), now=time.time() - 3600))
