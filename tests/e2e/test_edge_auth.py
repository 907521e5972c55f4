"""Edge authentication and authorisation through the real mesh: every public RPC needs a
user's JWT or a merchant's API key, whether it comes through Envoy (HTTP/JSON) or straight
over gRPC holding the gateway's certificate; what a credential may do is the policy table's
(services/framework/edge_policy.py) and the wallet and payments services' ownership checks.

The `gateway` fixture acts as an operator (to set up merchants, keys and funds); every
request under test carries its own credential, or none, through `anonymous`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from scripts.operator_token import signing_key_file
from services.framework.topology import GATEWAY, Profile
from services.users.adapters.tokens import AUDIENCE, ISSUER, public_jwk
from tests.e2e.test_payments_flow import CUR, create_merchant
from tests.e2e.test_slice_http import fund
from tests.helpers import ROOT, http_details, rpc_details, service_channel

PASSWORD = "correct horse battery staple"
ALL_SCOPES = [
    "API_KEY_SCOPE_PAYMENTS_READ",
    "API_KEY_SCOPE_PAYMENTS_WRITE",
    "API_KEY_SCOPE_REFUNDS_WRITE",
    "API_KEY_SCOPE_REPORTS_READ",
    "API_KEY_SCOPE_WEBHOOKS_WRITE",
]


@pytest.fixture(scope="module")
def anonymous(profile: Profile) -> Iterator[httpx.Client]:
    """The gateway, with no credential unless a request brings one."""
    with httpx.Client(base_url=f"http://127.0.0.1:{profile.gateway_port}", timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def as_gateway(profile: Profile) -> Iterator[WalletServiceStub]:
    """The wallet service straight over gRPC, presenting the gateway's certificate."""
    with service_channel(profile, "wallet", GATEWAY) as ch:
        yield WalletServiceStub(ch)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class User:
    def __init__(self, anonymous: httpx.Client) -> None:
        tag = uuid.uuid4().hex[:12]
        self.email = f"edge.{tag}@example.org"
        reply = anonymous.post(
            "/v1/users",
            json={
                "email": self.email,
                "phone": f"+4917{int(tag, 16) % 10**9:09d}",
                "password": PASSWORD,
                "displayName": "Edge Person",
                "countryCode": "DE",
            },
        )
        assert reply.status_code == 200, reply.text
        self.user_id: str = reply.json()["user"]["userId"]
        login = anonymous.post("/v1/auth:login", json={"email": self.email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        self.token: str = login.json()["accessToken"]
        self.headers = bearer(self.token)

    def open_wallet(self, anonymous: httpx.Client) -> str:
        reply = anonymous.post(
            "/v1/wallets",
            headers=self.headers,
            json={"ownerType": "OWNER_TYPE_USER", "ownerId": self.user_id, "currency": CUR},
        )
        assert reply.status_code == 200, reply.text
        return reply.json()["wallet"]["walletId"]  # type: ignore[no-any-return]


@pytest.fixture
def new_user(anonymous: httpx.Client) -> Callable[[], User]:
    return lambda: User(anonymous)


def api_key(
    gateway: httpx.Client, merchant_id: str, scopes: list[str] | None = None, rate_limit: int = 0
) -> tuple[str, str]:
    """A new key of the merchant: (its id, `<public id>.<secret>`)."""
    body: dict[str, Any] = {"scopes": scopes or ALL_SCOPES}
    if rate_limit:
        body["rateLimitPerMinute"] = rate_limit
    reply = gateway.post(f"/v1/merchants/{merchant_id}/apiKeys", json=body)
    assert reply.status_code == 200, reply.text
    key = reply.json()
    return key["apiKey"]["keyId"], f"{key['apiKey']['publicId']}.{key['secret']}"


def refused(reply: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    info, _ = http_details(reply.json())
    assert info is not None and info["reason"] == reason, reply.text
    return info


def grpc_refused(call: Callable[[], object], code: grpc.StatusCode, reason: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    info, _ = rpc_details(err.value)
    assert info is not None and info.reason == reason, info
    return err.value


# -- forged and broken credentials -------------------------------------------------------------


def _mesh_key(profile: Profile) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(signing_key_file(profile.name).read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _claims(subject: str, lifetime: int = 600) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + lifetime,
        "roles": ["user"],
    }


def forged(profile: Profile, kind: str, subject: str) -> str:
    """A token for `subject` that the edge must refuse, made the way `kind` says."""
    real = _mesh_key(profile)
    kid = public_jwk(real.public_key())["kid"]
    if kind == "expired":  # the mesh's own key, but long past its expiry
        return jwt.encode(_claims(subject, lifetime=-3600), real, algorithm="ES256", headers={"kid": kid})
    if kind == "wrong_signature":  # another key, naming the mesh key's kid
        other = ec.generate_private_key(ec.SECP256R1())
        return jwt.encode(_claims(subject), other, algorithm="ES256", headers={"kid": kid})
    if kind == "unknown_kid":
        other = ec.generate_private_key(ec.SECP256R1())
        return jwt.encode(_claims(subject), other, algorithm="ES256", headers={"kid": "not-a-key-of-users"})
    if kind == "alg_none":
        header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        return f"{header}.{b64(json.dumps(_claims(subject)).encode())}."
    if kind == "hs256_with_public_key":  # the public key, as published, used as an HMAC secret
        pem = real.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        signing_input = f"{header}.{b64(json.dumps(_claims(subject)).encode())}"
        signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(signature)}"
    if kind == "wrong_audience":
        claims = {**_claims(subject), "aud": "someone-else"}
        return jwt.encode(claims, real, algorithm="ES256", headers={"kid": kid})
    raise AssertionError(kind)


TOKEN_FORGERIES = [
    "expired",
    "wrong_signature",
    "unknown_kid",
    "alg_none",
    "hs256_with_public_key",
    "wrong_audience",
]
MALFORMED = [
    {"authorization": "Bearer"},
    {"authorization": "Bearer not-a-jwt"},
    {"authorization": "Basic dXNlcjpwYXNz"},
    {"authorization": "ApiKey no-secret-here"},
    {"x-api-key": "ipk_0000.isk_wrong"},
]


def test_register_login_and_the_jwks_need_no_credential(anonymous: httpx.Client) -> None:
    user = User(anonymous)  # registers and logs in without any credential
    assert user.token.count(".") == 2
    keys = anonymous.get("/.well-known/jwks.json")
    assert keys.status_code == 200 and keys.json()["keys"][0]["alg"] == "ES256"
    refreshed = anonymous.post("/v1/auth:refresh", json={"refreshToken": "not-a-real-refresh-token"})
    assert refreshed.status_code == 401  # refused by the users service itself, not the edge


def test_no_credential_is_401_through_envoy_and_unauthenticated_over_grpc(
    anonymous: httpx.Client, as_gateway: WalletServiceStub, new_user: Callable[[], User]
) -> None:
    wallet_id = new_user().open_wallet(anonymous)
    info = refused(anonymous.get(f"/v1/wallets/{wallet_id}"), 401, "INVALID_CREDENTIALS")
    assert info["metadata"]["problem"] == "missing"
    refused(anonymous.get("/v1/merchants"), 401, "INVALID_CREDENTIALS")
    # The gateway's certificate alone is no credential: it only relays clients.
    grpc_refused(
        lambda: as_gateway.GetWallet(wallet_pb.GetWalletRequest(wallet_id=wallet_id), timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )


@pytest.mark.parametrize("kind", TOKEN_FORGERIES)
def test_forged_and_expired_tokens_are_refused_both_ways(
    kind: str,
    profile: Profile,
    anonymous: httpx.Client,
    as_gateway: WalletServiceStub,
    new_user: Callable[[], User],
) -> None:
    user = new_user()
    wallet_id = user.open_wallet(anonymous)
    token = forged(profile, kind, user.user_id)
    reply = anonymous.get(f"/v1/wallets/{wallet_id}", headers=bearer(token))
    info = refused(reply, 401, "INVALID_CREDENTIALS")
    assert token not in reply.text and token.split(".")[1] not in reply.text
    expected_problem = {
        "expired": "expired",
        "wrong_signature": "invalid",
        "unknown_kid": "unknown_key",
        "alg_none": "algorithm",
        "hs256_with_public_key": "algorithm",
        "wrong_audience": "invalid",
    }[kind]
    assert info["metadata"]["problem"] == expected_problem
    grpc_refused(
        lambda: as_gateway.GetWallet(
            wallet_pb.GetWalletRequest(wallet_id=wallet_id),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    # The same user's real token is served, so the refusal was the token's alone.
    assert anonymous.get(f"/v1/wallets/{wallet_id}", headers=user.headers).status_code == 200


@pytest.mark.parametrize("headers", MALFORMED, ids=lambda h: next(iter(h.values())).split(" ")[0] or "empty")
def test_malformed_credentials_are_401(anonymous: httpx.Client, headers: dict[str, str]) -> None:
    refused(anonymous.get("/v1/merchants", headers=headers), 401, "INVALID_CREDENTIALS")


def test_two_credentials_at_once_are_refused(anonymous: httpx.Client, new_user: Callable[[], User]) -> None:
    user = new_user()
    reply = anonymous.get("/v1/merchants", headers={**user.headers, "x-api-key": "ipk_0000.isk_0000"})
    assert refused(reply, 401, "INVALID_CREDENTIALS")["metadata"]["problem"] == "ambiguous"


# -- users: their own wallets and nothing else -------------------------------------------------


def test_a_user_sees_only_their_own_wallets(
    anonymous: httpx.Client, gateway: httpx.Client, new_user: Callable[[], User]
) -> None:
    ada, ben = new_user(), new_user()
    adas, bens = ada.open_wallet(anonymous), ben.open_wallet(anonymous)
    fund(gateway, bens, 700)

    assert anonymous.get(f"/v1/wallets/{adas}", headers=ada.headers).status_code == 200
    # Another's wallet is answered exactly like one that does not exist.
    theirs = refused(anonymous.get(f"/v1/wallets/{bens}", headers=ada.headers), 404, "WALLET_NOT_FOUND")
    nobodys_id = str(uuid.uuid4())
    nobodys = refused(
        anonymous.get(f"/v1/wallets/{nobodys_id}", headers=ada.headers), 404, "WALLET_NOT_FOUND"
    )
    assert theirs["metadata"].keys() == nobodys["metadata"].keys()
    refused(anonymous.get(f"/v1/wallets/{bens}/transactions", headers=ada.headers), 404, "WALLET_NOT_FOUND")
    assert anonymous.get(f"/v1/wallets/{bens}/transactions", headers=ben.headers).status_code == 200

    mine = anonymous.get(
        "/v1/wallets", params={"ownerType": "OWNER_TYPE_USER", "ownerId": ada.user_id}, headers=ada.headers
    )
    assert mine.status_code == 200, mine.text
    assert [w["walletId"] for w in mine.json()["wallets"]] == [adas]
    refused(
        anonymous.get(
            "/v1/wallets",
            params={"ownerType": "OWNER_TYPE_USER", "ownerId": ben.user_id},
            headers=ada.headers,
        ),
        403,
        "PERMISSION_DENIED",
    )
    # Nor may a user open a wallet for someone else, or fund one from nothing.
    refused(
        anonymous.post(
            "/v1/wallets",
            headers=ada.headers,
            json={"ownerType": "OWNER_TYPE_USER", "ownerId": ben.user_id, "currency": "USD"},
        ),
        403,
        "PERMISSION_DENIED",
    )
    refused(
        anonymous.post(
            f"/v1/wallets/{adas}:fund",
            headers=ada.headers,
            json={"amount": {"amountMinor": "100", "currency": CUR}, "reference": str(uuid.uuid4())},
        ),
        403,
        "PERMISSION_DENIED",
    )
    assert int(gateway.get(f"/v1/wallets/{bens}").json()["wallet"]["balance"]["amountMinor"]) == 700


def test_the_same_rules_hold_straight_over_grpc(
    anonymous: httpx.Client, as_gateway: WalletServiceStub, new_user: Callable[[], User]
) -> None:
    ada, ben = new_user(), new_user()
    adas, bens = ada.open_wallet(anonymous), ben.open_wallet(anonymous)
    as_ada = (("authorization", f"Bearer {ada.token}"),)
    own = as_gateway.GetWallet(wallet_pb.GetWalletRequest(wallet_id=adas), metadata=as_ada, timeout=10)
    assert own.wallet.owner_id == ada.user_id
    grpc_refused(
        lambda: as_gateway.GetWallet(wallet_pb.GetWalletRequest(wallet_id=bens), metadata=as_ada, timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "WALLET_NOT_FOUND",
    )


def test_a_user_token_cannot_call_operator_rpcs_or_another_users_profile(
    anonymous: httpx.Client, new_user: Callable[[], User]
) -> None:
    ada, ben = new_user(), new_user()
    refused(anonymous.get("/v1/merchants", headers=ada.headers), 403, "PERMISSION_DENIED")
    assert anonymous.get(f"/v1/users/{ada.user_id}", headers=ada.headers).status_code == 200
    refused(anonymous.get(f"/v1/users/{ben.user_id}", headers=ada.headers), 403, "PERMISSION_DENIED")


# -- merchants: their own payments, within their key's scopes ---------------------------------


@pytest.fixture
def payer_wallet(
    anonymous: httpx.Client, gateway: httpx.Client, new_user: Callable[[], User]
) -> tuple[User, str]:
    user = new_user()
    wallet_id = user.open_wallet(anonymous)
    fund(gateway, wallet_id, 10_000)
    return user, wallet_id


def _payment(merchant_id: str, wallet_id: str, payer_user_id: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {
        "merchantId": merchant_id,
        "payerWalletId": wallet_id,
        "amount": {"amountMinor": "1000", "currency": CUR},
        "captureMethod": "CAPTURE_METHOD_MANUAL",
    }
    if payer_user_id:
        body["payerUserId"] = payer_user_id
    return body


def test_a_merchant_key_acts_only_on_its_own_payments(
    anonymous: httpx.Client,
    gateway: httpx.Client,
    payer_wallet: tuple[User, str],
    new_user: Callable[[], User],
) -> None:
    payer, wallet_id = payer_wallet
    shop, rival = create_merchant(gateway), create_merchant(gateway)
    _, shop_key = api_key(gateway, shop["merchantId"])
    _, rival_key = api_key(gateway, rival["merchantId"])
    as_shop, as_rival = {"x-api-key": shop_key}, {"authorization": f"ApiKey {rival_key}"}

    # A payment for another merchant is refused, and nothing is created.
    refused(
        anonymous.post(
            "/v1/payments",
            headers={**as_shop, "Idempotency-Key": str(uuid.uuid4())},
            json=_payment(rival["merchantId"], wallet_id),
        ),
        403,
        "PERMISSION_DENIED",
    )
    created = anonymous.post(
        "/v1/payments",
        headers={**as_shop, "Idempotency-Key": str(uuid.uuid4())},
        json=_payment(shop["merchantId"], wallet_id, payer.user_id),
    )
    assert created.status_code == 200, created.text
    payment_id = created.json()["payment"]["paymentId"]

    assert anonymous.get(f"/v1/payments/{payment_id}", headers=as_shop).status_code == 200
    refused(anonymous.get(f"/v1/payments/{payment_id}", headers=as_rival), 404, "PAYMENT_NOT_FOUND")
    refused(
        anonymous.post(f"/v1/payments/{payment_id}:cancel", headers=as_rival, json={"reason": "not mine"}),
        404,
        "PAYMENT_NOT_FOUND",
    )
    refused(
        anonymous.get(f"/v1/payments/{payment_id}/transactions", headers=as_rival), 404, "PAYMENT_NOT_FOUND"
    )
    # Listing without a merchant lists the caller's own; naming another is refused.
    listed = anonymous.get("/v1/payments", headers=as_shop)
    assert listed.status_code == 200, listed.text
    assert [p["paymentId"] for p in listed.json()["payments"]] == [payment_id]
    refused(
        anonymous.get("/v1/payments", params={"merchantId": shop["merchantId"]}, headers=as_rival),
        403,
        "PERMISSION_DENIED",
    )
    assert anonymous.get("/v1/payments", headers=as_rival).json().get("payments", []) == []

    # The payer reads the payment; another user does not learn it exists.
    assert anonymous.get(f"/v1/payments/{payment_id}", headers=payer.headers).status_code == 200
    refused(anonymous.get(f"/v1/payments/{payment_id}", headers=new_user().headers), 404, "PAYMENT_NOT_FOUND")

    # The owner captures it; the rival's attempt changed nothing.
    captured = anonymous.post(f"/v1/payments/{payment_id}:capture", headers=as_shop, json={})
    assert captured.status_code == 200, captured.text
    assert captured.json()["payment"]["state"] == "STATE_CAPTURED"

    # Its own settlement wallet, not the rival's.
    own_wallet = anonymous.get(f"/v1/wallets/{shop['settlementWalletId']}", headers=as_shop)
    assert own_wallet.status_code == 200, own_wallet.text
    refused(
        anonymous.get(f"/v1/wallets/{rival['settlementWalletId']}", headers=as_shop), 404, "WALLET_NOT_FOUND"
    )


def test_a_key_without_the_scope_is_403(
    anonymous: httpx.Client, gateway: httpx.Client, payer_wallet: tuple[User, str]
) -> None:
    _, wallet_id = payer_wallet
    shop = create_merchant(gateway)
    _, read_only = api_key(gateway, shop["merchantId"], scopes=["API_KEY_SCOPE_PAYMENTS_READ"])
    info = refused(
        anonymous.post(
            "/v1/payments",
            headers={"x-api-key": read_only, "Idempotency-Key": str(uuid.uuid4())},
            json=_payment(shop["merchantId"], wallet_id),
        ),
        403,
        "INSUFFICIENT_SCOPE",
    )
    assert info["metadata"]["required_scopes"] == "payments:write"
    assert anonymous.get("/v1/payments", headers={"x-api-key": read_only}).status_code == 200
    assert int(gateway.get(f"/v1/wallets/{wallet_id}").json()["wallet"]["balance"]["amountMinor"]) == 10_000


def test_a_revoked_key_is_refused_one_second_after_revocation(
    anonymous: httpx.Client, gateway: httpx.Client
) -> None:
    shop = create_merchant(gateway)
    key_id, key = api_key(gateway, shop["merchantId"])
    assert anonymous.get(f"/v1/merchants/{shop['merchantId']}", headers={"x-api-key": key}).status_code == 200
    revoked = gateway.post(f"/v1/merchants/{shop['merchantId']}/apiKeys/{key_id}:revoke", json={})
    assert revoked.status_code == 200, revoked.text
    time.sleep(1)
    reply = anonymous.get(f"/v1/merchants/{shop['merchantId']}", headers={"x-api-key": key})
    refused(reply, 401, "INVALID_CREDENTIALS")
    assert key.split(".")[1] not in reply.text
    # A wrong secret for a live key is refused the same way.
    _, live = api_key(gateway, shop["merchantId"])
    wrong = f"{live.split('.')[0]}.isk_not-the-secret"
    refused(
        anonymous.get(f"/v1/merchants/{shop['merchantId']}", headers={"x-api-key": wrong}),
        401,
        "INVALID_CREDENTIALS",
    )


def test_the_rate_limit_is_429_with_a_retry_hint_then_recovers(
    anonymous: httpx.Client, gateway: httpx.Client
) -> None:
    limit = 20  # a burst of 20, then one call every 3 s
    shop = create_merchant(gateway)
    _, key = api_key(gateway, shop["merchantId"], rate_limit=limit)
    path, headers = f"/v1/merchants/{shop['merchantId']}", {"x-api-key": key}
    replies = [anonymous.get(path, headers=headers) for _ in range(limit + 5)]
    codes = [r.status_code for r in replies]
    assert set(codes) == {200, 429} and codes.index(429) >= limit, codes
    limited = replies[codes.index(429)]
    info = refused(limited, 429, "RATE_LIMITED")
    assert 0 < int(info["metadata"]["retry_after_ms"]) <= 3_000
    hints = [d for d in limited.json()["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
    assert len(hints) == 1 and hints[0]["retryDelay"].endswith("s")

    deadline = time.monotonic() + 30
    while True:
        reply = anonymous.get(path, headers=headers)
        if reply.status_code == 200:
            break
        assert reply.status_code == 429 and time.monotonic() < deadline, reply.text
        time.sleep(int(http_details(reply.json())[0]["metadata"]["retry_after_ms"]) / 1000)  # type: ignore[index]
    assert reply.json()["merchant"]["merchantId"] == shop["merchantId"]


# -- operators and peers -----------------------------------------------------------------------


def test_an_operator_token_works_through_envoy_and_over_grpc(
    gateway: httpx.Client,
    as_gateway: WalletServiceStub,
    new_user: Callable[[], User],
    anonymous: httpx.Client,
) -> None:
    wallet_id = new_user().open_wallet(anonymous)
    assert gateway.get("/v1/merchants", params={"pageSize": 1}).status_code == 200
    assert gateway.get(f"/v1/wallets/{wallet_id}").status_code == 200
    operator = (("authorization", gateway.headers["authorization"]),)
    reply = as_gateway.GetWallet(
        wallet_pb.GetWalletRequest(wallet_id=wallet_id), metadata=operator, timeout=10
    )
    assert reply.wallet.wallet_id == wallet_id


def test_a_peer_identified_by_its_certificate_needs_no_credential(
    profile: Profile, anonymous: httpx.Client, new_user: Callable[[], User]
) -> None:
    wallet_id = new_user().open_wallet(anonymous)
    with service_channel(profile, "wallet", "payments") as ch:
        reply = WalletServiceStub(ch).GetWallet(wallet_pb.GetWalletRequest(wallet_id=wallet_id), timeout=10)
    assert reply.wallet.wallet_id == wallet_id


def test_a_rate_limited_call_over_grpc_carries_retry_info(
    profile: Profile, gateway: httpx.Client, as_gateway: WalletServiceStub
) -> None:
    shop = create_merchant(gateway)
    _, key = api_key(gateway, shop["merchantId"], rate_limit=1, scopes=["API_KEY_SCOPE_REPORTS_READ"])
    request = wallet_pb.GetWalletRequest(wallet_id=shop["settlementWalletId"])
    as_shop = (("x-api-key", key),)
    assert as_gateway.GetWallet(request, metadata=as_shop, timeout=10).wallet.owner_id == shop["merchantId"]
    err = grpc_refused(
        lambda: as_gateway.GetWallet(request, metadata=as_shop, timeout=10),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
    )
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    hints = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(hints) == 1
    retry = error_details_pb2.RetryInfo()
    hints[0].Unpack(retry)
    assert timedelta(0) < retry.retry_delay.ToTimedelta() <= timedelta(seconds=60)


def test_no_token_or_key_secret_reaches_any_log(
    profile: Profile, anonymous: httpx.Client, gateway: httpx.Client, new_user: Callable[[], User]
) -> None:
    user = new_user()
    shop = create_merchant(gateway)
    key_id, key = api_key(gateway, shop["merchantId"])
    forgery = forged(profile, "wrong_signature", user.user_id)
    anonymous.get(f"/v1/users/{user.user_id}", headers=user.headers)
    anonymous.get(f"/v1/users/{user.user_id}", headers=bearer(forgery))
    anonymous.get(f"/v1/merchants/{shop['merchantId']}", headers={"x-api-key": key})
    anonymous.get(f"/v1/merchants/{shop['merchantId']}", headers={"x-api-key": f"{key}x"})
    gateway.post(f"/v1/merchants/{shop['merchantId']}/apiKeys/{key_id}:revoke", json={})
    anonymous.get(f"/v1/merchants/{shop['merchantId']}", headers={"x-api-key": key})
    secrets = [user.token.split(".")[2], forgery.split(".")[2], key.split(".", 1)[1]]
    logs = sorted((ROOT / ".data" / profile.name / "logs").glob("*.log"))
    assert any(log.name.startswith("merchants") for log in logs)
    for log in logs:
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a credential reached {log.name}"
