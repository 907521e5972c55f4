"""The edge's credential checks (services/framework/edge_auth.py) with real ES256 keys: every
refusal the identity issue lists for tokens, and the JWKS cache's refresh on rotation; who a
caller without a credential is; and the policy table (services/framework/edge_policy.py)
checked against the contracts and applied."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping, Sequence

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import descriptor_pool
from interpay.merchants.v1 import merchants_service_pb2 as merchants_pb
from interpay.payments.v1 import payments_service_pb2 as payments_pb
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb

from services.framework.edge_auth import (
    ApiKey,
    BearerToken,
    EdgeAuthenticator,
    Kind,
    Principal,
    TokenVerifier,
    credential,
    scope_name,
)
from services.framework.edge_policy import POLICY, authorize
from services.framework.errors import PermissionDenied, Unauthenticated
from services.framework.identity import Caller
from services.framework.interceptors import public_rpcs
from services.framework.topology import GATEWAY, OPERATOR, SERVICES
from services.users.adapters.tokens import AUDIENCE, ISSUER, TokenIssuer


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Jwks:
    """The users service's JWKS as GetJwks would return it, counting fetches."""

    def __init__(self, *issuers: TokenIssuer) -> None:
        self.issuers = list(issuers)
        self.fetches = 0

    async def __call__(self) -> Sequence[Mapping[str, str]]:
        self.fetches += 1
        return [jwk for issuer in self.issuers for jwk in issuer.jwks]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def issuer() -> TokenIssuer:
    return TokenIssuer(_pem(ec.generate_private_key(ec.SECP256R1())))


def verifier(jwks: Jwks, clock: Clock | None = None) -> TokenVerifier:
    return TokenVerifier(jwks, ISSUER, AUDIENCE, refresh_seconds=30, clock=clock or Clock())


async def refused(v: TokenVerifier, token: str, problem: str) -> None:
    with pytest.raises(Unauthenticated) as err:
        await v.verify(token)
    assert err.value.reason == "INVALID_CREDENTIALS"
    assert err.value.metadata["problem"] == problem
    assert token not in err.value.message


async def test_a_valid_token_gives_its_claims_and_a_user_principal() -> None:
    users = issuer()
    user_id = uuid.uuid4()
    claims = await verifier(Jwks(users)).verify(users.issue(user_id))
    assert Principal.from_claims(claims) == Principal(Kind.USER, str(user_id), frozenset({"user"}))


async def test_an_admin_role_makes_an_operator() -> None:
    users = issuer()
    token = jwt.encode(
        {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "ops",
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
            "roles": ["admin"],
        },
        users.private_key,
        algorithm="ES256",
        headers={"kid": users.kid},
    )
    assert Principal.from_claims(await verifier(Jwks(users)).verify(token)).kind == Kind.OPERATOR


async def test_an_expired_token_is_refused() -> None:
    users = issuer()
    stale = users.issue(uuid.uuid4(), now=time.time() - users.ttl_seconds - 5)
    await refused(verifier(Jwks(users)), stale, "expired")


async def test_alg_none_is_refused() -> None:
    users = issuer()
    claims = jwt.decode(users.issue(uuid.uuid4()), options={"verify_signature": False})
    header = {"alg": "none", "typ": "JWT", "kid": users.kid}
    unsigned = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."
    await refused(verifier(Jwks(users)), unsigned, "algorithm")


async def test_hs256_signed_with_the_public_key_is_refused() -> None:
    # The classic key confusion: the verifier's public key used as an HMAC secret.
    users = issuer()
    public_pem = users.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = jwt.decode(users.issue(uuid.uuid4()), options={"verify_signature": False})
    signing_input = (
        f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': users.kid}).encode())}."
        f"{_b64(json.dumps(claims).encode())}"
    )
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    await refused(verifier(Jwks(users)), f"{signing_input}.{_b64(mac)}", "algorithm")


async def test_a_forged_signature_is_refused() -> None:
    users, forger = issuer(), issuer()
    # The forger's own key, claiming the real key's kid.
    forged = jwt.encode(
        jwt.decode(users.issue(uuid.uuid4()), options={"verify_signature": False}),
        forger.private_key,
        algorithm="ES256",
        headers={"kid": users.kid},
    )
    await refused(verifier(Jwks(users)), forged, "invalid")
    token = users.issue(uuid.uuid4())
    head, payload, signature = token.split(".")
    tampered_claims = {**json.loads(base64.urlsafe_b64decode(payload + "==")), "sub": str(uuid.uuid4())}
    tampered = f"{head}.{_b64(json.dumps(tampered_claims).encode())}.{signature}"
    await refused(verifier(Jwks(users)), tampered, "invalid")


async def test_another_audience_or_issuer_is_refused() -> None:
    users = issuer()
    now = int(time.time())
    for claims in ({"iss": ISSUER, "aud": "elsewhere"}, {"iss": "https://evil.example", "aud": AUDIENCE}):
        token = jwt.encode(
            {**claims, "sub": "u", "iat": now, "exp": now + 60},
            users.private_key,
            algorithm="ES256",
            headers={"kid": users.kid},
        )
        await refused(verifier(Jwks(users)), token, "invalid")


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.e30.x"])
async def test_a_malformed_token_is_refused(token: str) -> None:
    users = issuer()
    with pytest.raises(Unauthenticated):
        await verifier(Jwks(users)).verify(token)


async def test_an_unknown_kid_refetches_the_jwks_once_per_interval() -> None:
    old, new = issuer(), issuer()
    jwks, clock = Jwks(old), Clock()
    v = verifier(jwks, clock)
    await v.verify(old.issue(uuid.uuid4()))
    await v.verify(old.issue(uuid.uuid4()))
    assert jwks.fetches == 1  # cached
    jwks.issuers.append(new)  # the users service rotated its key
    clock.now += 31
    await v.verify(new.issue(uuid.uuid4()))
    assert jwks.fetches == 2
    stranger = issuer()
    for _ in range(5):  # forged kids do not hammer the users service
        await refused(v, stranger.issue(uuid.uuid4()), "unknown_key")
    assert jwks.fetches == 2
    jwks.issuers.remove(old)  # the retired key left the JWKS...
    clock.now += 31
    await refused(v, stranger.issue(uuid.uuid4()), "unknown_key")
    assert jwks.fetches == 3
    await refused(v, old.issue(uuid.uuid4()), "unknown_key")  # ...and stopped verifying


def test_a_call_carries_one_well_formed_credential() -> None:
    assert credential([]) is None
    assert credential([("authorization", "Bearer a.b.c")]) == BearerToken("a.b.c")
    assert credential([("authorization", "ApiKey pk_1.s3cret")]) == ApiKey("pk_1", "s3cret")
    assert credential([("x-api-key", "pk_1.s3cret")]) == ApiKey("pk_1", "s3cret")
    assert credential([("user-agent", "curl"), ("x-api-key", "pk_1.s.x")]) == ApiKey("pk_1", "s.x")
    for bad in (
        [("authorization", "Basic dXNlcjpwdw==")],
        [("authorization", "Bearer")],
        [("authorization", "Bearer a b")],
        [("authorization", "ApiKey no-secret")],
        [("x-api-key", ".secret")],
        [("authorization", "Bearer a.b.c"), ("x-api-key", "pk_1.s")],
    ):
        with pytest.raises(Unauthenticated):
            credential(bad)
    for oversized in (f"{'p' * 65}.secret", f"pk_1.{'s' * 257}"):  # beyond AuthenticateApiKey's rules
        with pytest.raises(Unauthenticated):
            credential([("x-api-key", oversized)])


# -- who the caller is without a credential, and what the policy lets it do ----------------------


def authenticator(require_identity: bool = True) -> EdgeAuthenticator:
    async def no_jwks() -> Sequence[Mapping[str, str]]:
        return []

    async def merchant_key(key: ApiKey) -> Principal:
        return Principal(Kind.MERCHANT, "m-1", frozenset({"payments:read"}))

    return EdgeAuthenticator(TokenVerifier(no_jwks, ISSUER, AUDIENCE), merchant_key, require_identity)


async def test_identities_become_principals_and_the_gateway_needs_a_credential() -> None:
    auth = authenticator()
    assert await auth.principal([], Caller("payments", verified=True)) == Principal(Kind.SERVICE, "payments")
    assert await auth.principal([], Caller(OPERATOR, verified=True)) == Principal(Kind.OPERATOR, OPERATOR)
    for nobody in (Caller(GATEWAY, verified=True), Caller("ipv4:127.0.0.1:1", verified=False)):
        with pytest.raises(Unauthenticated):
            await auth.principal([], nobody)
    # A credential decides, whoever holds the connection.
    as_key = await auth.principal([("x-api-key", "pk_1.s")], Caller(OPERATOR, verified=True))
    assert as_key.kind is Kind.MERCHANT
    # Plaintext development mode: no identities, so a call without a credential is a peer's.
    plain = await authenticator(require_identity=False).principal(
        [], Caller("ipv4:127.0.0.1:1", verified=False)
    )
    assert plain.kind is Kind.SERVICE and plain.subject.startswith("unverified:")


def test_every_api_key_scope_has_a_policy_name() -> None:
    names = {scope_name(v) for v in merchants_pb.ApiKeyScope.values() if v}
    used = {s for rules in POLICY.values() for r in rules.values() for g in r.grants for s in g.scopes}
    assert (
        used
        <= names
        == {"payments:read", "payments:write", "refunds:write", "reports:read", "webhooks:write"}
    )


def test_the_policy_names_only_public_rpcs_and_real_owner_fields() -> None:
    for spec in SERVICES:
        public = public_rpcs(spec)
        service = descriptor_pool.Default().FindServiceByName(spec.grpc_service)
        for rpc, entry in POLICY.get(spec.grpc_service, {}).items():
            assert rpc in public, f"{spec.grpc_service}/{rpc} is not a public RPC"
            fields = service.methods_by_name[rpc].input_type.fields_by_name
            for grant in entry.grants:
                assert not grant.owner_field or grant.owner_field in fields, (rpc, grant.owner_field)
    assert set(POLICY) <= {spec.grpc_service for spec in SERVICES}


WALLETS = "interpay.wallet.v1.WalletService"
PAYMENTS = "interpay.payments.v1.PaymentService"


def test_the_policy_admits_grants_and_refuses_the_rest() -> None:
    user = Principal(Kind.USER, "u-1")
    reader = Principal(Kind.MERCHANT, "m-1", frozenset({"payments:read"}))
    writer = Principal(Kind.MERCHANT, "m-1", frozenset({"payments:write"}))
    for everyone in (Principal(Kind.OPERATOR, "op"), Principal(Kind.SERVICE, "payments")):
        authorize(WALLETS, "FundWallet", everyone, wallet_pb.FundWalletRequest())
    authorize(WALLETS, "GetWallet", user, wallet_pb.GetWalletRequest())
    with pytest.raises(PermissionDenied) as denied:
        authorize(WALLETS, "FundWallet", user, wallet_pb.FundWalletRequest())  # unlisted: operators only
    assert denied.value.reason == "PERMISSION_DENIED"
    with pytest.raises(PermissionDenied) as scope:
        authorize(PAYMENTS, "CreatePayment", reader, payments_pb.CreatePaymentRequest(merchant_id="m-1"))
    assert (
        scope.value.reason == "INSUFFICIENT_SCOPE"
        and scope.value.metadata["required_scopes"] == "payments:write"
    )
    authorize(PAYMENTS, "CreatePayment", writer, payments_pb.CreatePaymentRequest(merchant_id="m-1"))
    with pytest.raises(PermissionDenied):
        authorize(PAYMENTS, "CreatePayment", writer, payments_pb.CreatePaymentRequest(merchant_id="m-2"))
    # A list's empty owner filter becomes the caller's own; another's is refused.
    listing = payments_pb.ListPaymentsRequest()
    authorize(PAYMENTS, "ListPayments", reader, listing)
    assert listing.merchant_id == "m-1"
    with pytest.raises(PermissionDenied):
        authorize(PAYMENTS, "ListPayments", reader, payments_pb.ListPaymentsRequest(merchant_id="m-2"))
    with pytest.raises(PermissionDenied):
        authorize(PAYMENTS, "ListPayments", user, payments_pb.ListPaymentsRequest(merchant_id="m-1"))
