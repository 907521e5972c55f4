"""The merchants service's pure parts: the merchant lifecycle, API key states, rotation
plans and authentication refusals, secrets and their hashes, event type checks, the
rate-limit refusal's RetryInfo, page tokens, and the internal-caller allowlist."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from services.framework.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated
from services.framework.identity import Caller, admit, identify
from services.framework.topology import BY_NAME, OPERATOR
from services.merchants.domain.credentials import hash_secret, new_public_id, new_secret, secret_matches
from services.merchants.domain.model import (
    ApiKey,
    ApiKeyScope,
    ApiKeyState,
    Merchant,
    MerchantState,
    PayoutAccount,
    RateLimited,
    check_event_types,
    check_key_usable,
    needs_transition,
    plan_rotation,
)
from services.merchants.service_layer import pages

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def merchant(state: MerchantState, wallet: bool = True) -> Merchant:
    return Merchant(
        merchant_id=uuid.uuid4(),
        legal_name="Shop GmbH",
        display_name="Shop",
        contact_email="ops@shop.example",
        country_code="DE",
        settlement_currency="EUR",
        settlement_wallet_id=uuid.uuid4() if wallet else None,
        payout_account=PayoutAccount("Shop GmbH", "DE", iban="DE89370400440532013000"),
        fee_bps=290,
        state=state,
        suspend_reason="x" if state is MerchantState.SUSPENDED else "",
        created_at=NOW,
        updated_at=NOW,
    )


def key(
    expires_at: datetime | None = None, revoked_at: datetime | None = None, replaced: bool = False
) -> ApiKey:
    return ApiKey(
        key_id=uuid.uuid4(),
        merchant_id=uuid.uuid4(),
        public_id=new_public_id(),
        scopes=(ApiKeyScope.PAYMENTS_WRITE,),
        rate_limit_per_minute=10,
        expires_at=expires_at,
        revoked_at=revoked_at,
        replaced_by_key_id=uuid.uuid4() if replaced else None,
        last_used_at=None,
        created_at=NOW - timedelta(days=10),
    )


@pytest.mark.parametrize(
    ("state", "target", "changes"),
    [
        (MerchantState.PENDING, MerchantState.ACTIVE, True),
        (MerchantState.SUSPENDED, MerchantState.ACTIVE, True),
        (MerchantState.ACTIVE, MerchantState.ACTIVE, False),
        (MerchantState.ACTIVE, MerchantState.SUSPENDED, True),
        (MerchantState.SUSPENDED, MerchantState.SUSPENDED, False),
    ],
)
def test_allowed_transitions(state: MerchantState, target: MerchantState, changes: bool) -> None:
    assert needs_transition(merchant(state), target) is changes


def test_a_pending_merchant_cannot_be_suspended_nor_activated_without_a_wallet() -> None:
    with pytest.raises(FailedPrecondition) as err:
        needs_transition(merchant(MerchantState.PENDING), MerchantState.SUSPENDED)
    assert err.value.reason == "INVALID_STATE" and err.value.metadata["state"] == "PENDING"
    assert "PENDING" in err.value.message and "only a merchant that is ACTIVE can" in err.value.message
    with pytest.raises(FailedPrecondition, match="settlement wallet"):
        needs_transition(merchant(MerchantState.PENDING, wallet=False), MerchantState.ACTIVE)


def test_key_states_read_off_the_clock() -> None:
    assert key().state_at(NOW) is ApiKeyState.ACTIVE
    assert key(expires_at=NOW + timedelta(seconds=1)).state_at(NOW) is ApiKeyState.ACTIVE
    assert key(expires_at=NOW).state_at(NOW) is ApiKeyState.EXPIRED
    assert key(expires_at=NOW + timedelta(days=1), revoked_at=NOW).state_at(NOW) is ApiKeyState.REVOKED


def test_every_refusal_of_a_genuine_key_is_invalid_credentials_or_permission_denied() -> None:
    check_key_usable(key(), MerchantState.ACTIVE, NOW)
    for dead, state in ((key(revoked_at=NOW), "REVOKED"), (key(expires_at=NOW), "EXPIRED")):
        with pytest.raises(Unauthenticated) as err:
            check_key_usable(dead, MerchantState.ACTIVE, NOW)
        assert err.value.reason == "INVALID_CREDENTIALS" and err.value.metadata["key_state"] == state
    for merchant_state in (MerchantState.PENDING, MerchantState.SUSPENDED):
        with pytest.raises(PermissionDenied) as denied:
            check_key_usable(key(), merchant_state, NOW)
        assert denied.value.reason == "INVALID_STATE"


def test_rotation_plans() -> None:
    forever = key()
    plan = plan_rotation(forever, timedelta(hours=1), NOW)
    assert (plan.revoke_old_now, plan.old_expires_at, plan.new_expires_at) == (
        False,
        NOW + timedelta(hours=1),
        None,
    )
    assert plan_rotation(forever, timedelta(0), NOW).revoke_old_now
    # The overlap never extends a key's life, and the new key gets the old one's lifetime.
    soon = key(expires_at=NOW + timedelta(minutes=5))
    plan = plan_rotation(soon, timedelta(hours=1), NOW)
    assert plan.old_expires_at == NOW + timedelta(minutes=5)
    assert plan.new_expires_at == NOW + timedelta(days=10, minutes=5)
    for stale in (key(revoked_at=NOW), key(expires_at=NOW), key(replaced=True)):
        with pytest.raises(FailedPrecondition) as err:
            plan_rotation(stale, timedelta(hours=1), NOW)
        assert err.value.reason == "INVALID_STATE"


def test_secrets_are_random_and_only_their_hash_matches() -> None:
    secret = new_secret()
    assert secret != new_secret() and len(secret) > 40
    stored = hash_secret(secret)
    assert secret.encode() not in stored and len(stored) == 32
    assert secret_matches(secret, stored)
    assert not secret_matches(secret + "x", stored)
    assert not secret_matches(secret, None)


def test_event_types_must_come_from_a_service_of_the_mesh() -> None:
    check_event_types(["interpay.payments.v1.PaymentCaptured"], {"payments"})
    with pytest.raises(InvalidArgument) as err:
        check_event_types(["interpay.payments.v1.PaymentCaptured", "interpay.nope.v1.X"], {"payments"})
    assert [v.field for v in err.value.field_violations] == ["event_types[1]"]


def test_a_rate_limited_call_carries_a_retry_info() -> None:
    refusal = RateLimited(key(), timedelta(milliseconds=1500))
    assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED and refusal.reason == "RATE_LIMITED"
    status = refusal.to_status("merchants.interpay.dev")
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR))
    assert retry.retry_delay.ToTimedelta() == timedelta(milliseconds=1500)
    assert refusal.metadata["retry_after_ms"] == "1500"


def test_a_page_token_is_refused_by_another_listing() -> None:
    rows = [(NOW, uuid.uuid4()), (NOW, uuid.uuid4())]
    kept, token = pages.page(rows, 1, "apiKeys/a", lambda r: r)
    assert kept == rows[:1] and pages.decode(token, "apiKeys/a") == rows[0]
    with pytest.raises(InvalidArgument):
        pages.decode(token, "apiKeys/b")


class _Context:
    def __init__(self, identity: bytes | None) -> None:
        self.identity = identity

    def peer_identities(self) -> Any:
        return [self.identity] if self.identity else None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"


def authorize(context: _Context, rpc: str, require_identity: bool = True) -> Caller:
    caller = identify(context)
    admit(caller, rpc, BY_NAME["merchants"].internal_callers[rpc], require_identity)
    return caller


def test_the_internal_rpcs_admit_the_allowlist_only() -> None:
    for rpc, allowed in BY_NAME["merchants"].internal_callers.items():
        for caller in allowed:
            identity = f"spiffe://interpay.local/ns/interpay/sa/{caller}".encode()
            assert str(authorize(_Context(identity), rpc)) == caller
        # Every service checks API keys (edge authentication); nothing else reaches users.
        intruder = OPERATOR if rpc == "AuthenticateApiKey" else "users"
        assert intruder not in allowed
        with pytest.raises(PermissionDenied):
            authorize(_Context(f"{intruder}.interpay.svc".encode()), rpc)
        with pytest.raises(Unauthenticated):
            authorize(_Context(None), rpc)
        plaintext = authorize(_Context(None), rpc, require_identity=False)  # development only
        assert str(plaintext) == "unverified:ipv4:127.0.0.1:40000"
