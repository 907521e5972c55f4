"""The users service over HTTP/JSON through Envoy: sessions, optimistic profile updates,
KYC, deletion and erasure, and login throttling answered with 429 and a RetryInfo, per
account and per source — the source being the address Envoy saw the connection come
from, whatever address a client writes in its headers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from interpay.users.v1 import users_service_pb2 as pb
from interpay.users.v1.users_service_pb2_grpc import UserServiceStub

from services.framework.topology import Profile
from services.users.adapters.login_throttle import ThrottlePolicy
from tests.e2e.client_address import SourceClient
from tests.helpers import http_details, operator_headers

PASSWORD = "correct horse battery staple"


@pytest.fixture
def new_source(profile: Profile) -> Iterator[Callable[[], SourceClient]]:
    """Operator clients of the gateway, each connecting from a loopback address of its own
    (tests/e2e/client_address.py): the users service's per-source login throttling counts
    the address Envoy saw, so each test's failures stay its own."""
    clients: list[SourceClient] = []

    def make() -> SourceClient:
        clients.append(SourceClient(profile, headers=operator_headers(profile)))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def register(source: httpx.Client) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:12]
    body = {
        "email": f"http.{tag}@example.net",
        "phone": f"+33{int(tag, 16) % 10**9:09d}",
        "password": PASSWORD,
        "displayName": "Http Person",
        "countryCode": "FR",
    }
    reply = source.post("/v1/users", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()["user"]  # type: ignore[no-any-return]


def login(
    source: httpx.Client, email: str, password: str = PASSWORD, headers: dict[str, str] | None = None
) -> httpx.Response:
    return source.post("/v1/auth:login", json={"email": email, "password": password}, headers=headers)


def test_sessions_refresh_and_end_over_http(
    gateway: httpx.Client, new_source: Callable[[], SourceClient]
) -> None:
    source = new_source()
    user = register(source)
    session = login(source, user["email"]).json()
    refreshed = source.post("/v1/auth:refresh", json={"refreshToken": session["refreshToken"]})
    assert refreshed.status_code == 200, refreshed.text
    token = refreshed.json()["refreshToken"]
    assert gateway.post("/v1/auth:logout", json={"refreshToken": token}).status_code == 200
    assert gateway.post("/v1/auth:logout", json={"refreshToken": token}).status_code == 200
    again = gateway.post("/v1/auth:refresh", json={"refreshToken": token})
    assert again.status_code == 401
    assert http_details(again.json())[0]["reason"] == "INVALID_CREDENTIALS"  # type: ignore[index]
    revoked = gateway.post(f"/v1/users/{user['userId']}/sessions:revokeAll", json={})
    assert revoked.status_code == 200 and revoked.json()["revokedSessionCount"] == 0


def test_repeated_failed_logins_are_answered_429_with_retry_info(
    new_source: Callable[[], SourceClient],
) -> None:
    source = new_source()
    user = register(source)
    for _ in range(ThrottlePolicy().account_limit):
        assert login(source, user["email"], "not the password").status_code == 401
    reply = login(source, user["email"])
    assert reply.status_code == 429, reply.text
    body = reply.json()
    info, _ = http_details(body)
    assert info is not None and info["reason"] == "RATE_LIMITED"
    retry = next(d for d in body["details"] if d["@type"].endswith("google.rpc.RetryInfo"))
    delay = int(retry["retryDelay"].removesuffix("s"))
    assert 0 < delay <= ThrottlePolicy().account_lockout_seconds
    assert int(info["metadata"]["retry_after_seconds"]) == delay
    assert PASSWORD not in reply.text


def test_profile_updates_with_a_stale_version_are_409_and_change_nothing(
    gateway: httpx.Client, new_source: Callable[[], SourceClient]
) -> None:
    user = register(new_source())
    path = f"/v1/users/{user['userId']}/profile"
    reply = gateway.patch(
        path, params={"expectedVersion": 1, "updateMask": "displayName"}, json={"displayName": "Renamed"}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["user"]["profile"] == {
        "displayName": "Renamed",
        "countryCode": "FR",
        "preferredLanguage": "en",
        "version": "2",
    }
    stale = gateway.patch(
        path, params={"expectedVersion": 1, "updateMask": "displayName"}, json={"displayName": "Lost"}
    )
    assert stale.status_code == 409, stale.text
    info, _ = http_details(stale.json())
    assert (
        info is not None and info["reason"] == "INVALID_STATE" and info["metadata"]["current_version"] == "2"
    )
    assert gateway.get(f"/v1/users/{user['userId']}").json()["user"]["profile"]["displayName"] == "Renamed"


def test_kyc_then_delete_then_erase_over_http(
    gateway: httpx.Client, new_source: Callable[[], SourceClient]
) -> None:
    source = new_source()
    user = register(source)
    base = f"/v1/users/{user['userId']}"
    submitted = gateway.post(
        f"{base}/kycDocuments",
        json={
            "documentType": "DOCUMENT_TYPE_PASSPORT",
            "documentReference": "kyc/p.jpg",
            "issuingCountry": "FR",
        },
    )
    assert submitted.status_code == 200, submitted.text
    document_id = submitted.json()["document"]["documentId"]
    reviewed = gateway.post(
        f"{base}/kycDocuments/{document_id}:review", json={"decision": "KYC_DECISION_VERIFIED"}
    )
    assert reviewed.status_code == 200 and reviewed.json()["kycLevel"] == 1
    status = gateway.get(f"{base}/kyc").json()["kycStatus"]
    assert status["kycLevel"] == 1 and {lim["perTransaction"]["currency"] for lim in status["limits"]} >= {
        "EUR"
    }
    assert [d["documentId"] for d in gateway.get(f"{base}/kycDocuments").json()["documents"]] == [document_id]

    deleted = gateway.delete(base)
    assert deleted.status_code == 200 and deleted.json()["user"]["state"] == "STATE_DELETED"
    assert login(source, user["email"]).status_code == 401

    erased = gateway.post(f"{base}:erase", json={"reason": "user request"})
    assert erased.status_code == 200, erased.text
    assert erased.json()["user"]["email"] == "" and erased.json()["user"]["state"] == "STATE_ERASED"
    export = gateway.get(f"{base}:export").json()["dataExport"]
    assert export["user"]["email"] == "" and export["kycDocuments"][0]["documentReference"] == ""
    assert gateway.delete(base).status_code == 400  # FAILED_PRECONDITION: erased for good


def test_the_internal_risk_profile_is_not_reachable_through_the_gateway(
    gateway: httpx.Client, profile: Profile, new_source: Callable[[], SourceClient]
) -> None:
    user = register(new_source())
    reply = gateway.post("/interpay.users.v1.UserService/GetUserRiskProfile", json={"userId": user["userId"]})
    assert reply.status_code == 404
    with grpc.insecure_channel(f"127.0.0.1:{profile.gateway_port}") as ch:
        with pytest.raises(grpc.RpcError) as err:
            UserServiceStub(ch).GetUserRiskProfile(
                pb.GetUserRiskProfileRequest(user_id=user["userId"]), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


FORGED = {"x-envoy-external-address": "192.0.2.66", "x-forwarded-for": "192.0.2.67, 10.0.0.1"}


def test_a_client_cannot_name_its_own_address(
    gateway: httpx.Client, new_source: Callable[[], SourceClient]
) -> None:
    """The address a login's session records is the connection's, as Envoy saw it: the
    addresses a client writes in `x-envoy-external-address` and `x-forwarded-for` are
    overwritten at the gateway, never passed on."""
    source = new_source()
    user = register(source)
    reply = login(source, user["email"], headers=FORGED)
    assert reply.status_code == 200, reply.text
    export = gateway.get(f"/v1/users/{user['userId']}:export")
    assert export.status_code == 200, export.text
    sessions = export.json()["dataExport"]["sessions"]
    assert [s["ipAddress"] for s in sessions] == [source.source_address]


def test_a_source_is_locked_after_repeated_failures_and_forged_headers_do_not_escape_it(
    new_source: Callable[[], SourceClient],
) -> None:
    """Per-source throttling counts the connection's address: failures against many
    accounts from one address lock that address (429, scope `source`) even for another
    account with the right password, and a forged address header does not get around it;
    another address (another client) is not affected."""
    policy = ThrottlePolicy()
    attacker, elsewhere = new_source(), new_source()
    victim = register(elsewhere)
    for i in range(policy.source_limit):
        guess = login(attacker, f"nobody.{i}.{uuid.uuid4().hex}@example.net", "guess guess")
        assert guess.status_code == 401, guess.text
    for headers in (None, FORGED, {"x-envoy-external-address": elsewhere.source_address}):
        locked = login(attacker, victim["email"], headers=headers)
        assert locked.status_code == 429, locked.text
        info, _ = http_details(locked.json())
        assert info is not None and info["reason"] == "RATE_LIMITED" and info["metadata"]["scope"] == "source"
    assert login(elsewhere, victim["email"]).status_code == 200
