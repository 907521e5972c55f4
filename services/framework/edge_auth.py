"""Edge credentials: who a caller of a public RPC is.

The framework's `interceptors.EdgeAuthInterceptor` runs on every public RPC (one with a
`google.api.http` rule), through Envoy or straight over gRPC alike, and finds its
`Principal` here; services/framework/edge_policy.py then says what that principal may do,
and handlers read it with `current_principal()` to check ownership.

- A call carries at most one credential: `authorization: Bearer <JWT>`, or an API key as
  `authorization: ApiKey <public id>.<secret>` or `x-api-key: <public id>.<secret>`.
  Anything else in `authorization`, or two credentials at once, is malformed. A
  credential, when present, always decides who the caller is, whoever holds the
  connection (so an engineer can act as a user with grpcurl).
- A JWT is accepted only as ES256 with a `kid` naming a key of the users service's JWKS,
  a valid signature, the expected issuer and audience, and `exp`, `iat` and `sub`
  present and current. `alg: none`, HS256 (the public key used as an HMAC secret) and
  every other algorithm are refused before any key is looked at.
- The JWKS is fetched once (users `GetJwks`) and cached by `kid`; an unknown `kid`
  refetches it (a key rotation), at most once per `refresh_seconds`, so a stream of
  forged kids cannot turn into a stream of calls to the users service.
- An API key is checked by the merchants service (`AuthenticateApiKey`) on every call, so
  a revoked key is refused on its next use and each key's rate limit holds; its refusals
  (UNAUTHENTICATED, PERMISSION_DENIED for a suspended merchant, RESOURCE_EXHAUSTED with a
  RetryInfo) reach the caller unchanged.
- Without a credential, the caller is its mTLS identity: a service of the mesh is a
  `service` principal, the `operator` certificate an `operator`; the `gateway` (Envoy)
  only relays clients, so a call through it without a credential is refused.

Every refusal of a credential is UNAUTHENTICATED with ErrorInfo reason INVALID_CREDENTIALS
and a `problem` in its metadata; a token's or key's content never appears in a message.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from interpay.merchants.v1 import merchants_service_pb2 as merchants_pb
from interpay.merchants.v1.merchants_service_pb2_grpc import MerchantsServiceStub
from interpay.users.v1 import users_service_pb2 as users_pb
from interpay.users.v1.users_service_pb2_grpc import UserServiceStub

from services.framework.errors import Unauthenticated
from services.framework.identity import Caller
from services.framework.peers import Peers
from services.framework.topology import BY_NAME, OPERATOR

ALGORITHM = "ES256"
ADMIN_ROLE = "admin"
# What the users service puts in its tokens (services/users/adapters/tokens.py).
ISSUER = "https://users.interpay.dev"
AUDIENCE = "interpay"
# The largest public id and secret AuthenticateApiKey accepts (its contract's rules).
PUBLIC_ID_MAX = 64
SECRET_MAX = 256

FetchJwks = Callable[[], Awaitable[Sequence[Mapping[str, str]]]]


class Kind(StrEnum):
    USER = "user"  # a person, by a JWT from the users service
    MERCHANT = "merchant"  # a merchant's backend, by one of its API keys
    SERVICE = "service"  # a peer, by its mTLS identity
    OPERATOR = "operator"  # an engineer: the operator certificate, or a JWT with the admin role


@dataclass(frozen=True)
class Principal:
    kind: Kind
    subject: str  # user id, merchant id, service name or operator name
    scopes: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Principal:
        roles = claims.get("roles") or ()
        kind = Kind.OPERATOR if ADMIN_ROLE in roles else Kind.USER
        return cls(kind, str(claims["sub"]), frozenset(str(r) for r in roles))


@dataclass(frozen=True)
class BearerToken:
    token: str


@dataclass(frozen=True)
class ApiKey:
    public_id: str
    secret: str


def _refuse(problem: str, message: str) -> Unauthenticated:
    return Unauthenticated(message, reason="INVALID_CREDENTIALS", metadata={"problem": problem})


def _api_key(value: str) -> ApiKey:
    public_id, dot, secret = value.strip().partition(".")
    if not dot or not public_id or not secret or len(public_id) > PUBLIC_ID_MAX or len(secret) > SECRET_MAX:
        raise _refuse("malformed", "an API key is <public id>.<secret>")
    return ApiKey(public_id, secret)


def credential(metadata: Iterable[tuple[str, Any]]) -> BearerToken | ApiKey | None:
    """The one credential a call carries, or None if it carries none."""
    headers: dict[str, list[str]] = {}
    for key, value in metadata:
        if isinstance(value, str):
            headers.setdefault(key.lower(), []).append(value)
    found: list[BearerToken | ApiKey] = []
    for value in headers.get("authorization", []):
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() == "bearer" and rest.strip() and " " not in rest.strip():
            found.append(BearerToken(rest.strip()))
        elif scheme.lower() == "apikey" and rest.strip():
            found.append(_api_key(rest))
        else:
            raise _refuse("malformed", "authorization must be `Bearer <token>` or `ApiKey <key>`")
    found += [_api_key(value) for value in headers.get("x-api-key", [])]
    if len(found) > 1:
        raise _refuse("ambiguous", "a call carries one credential, not several")
    return found[0] if found else None


def _public_key(jwk: Mapping[str, str]) -> ec.EllipticCurvePublicKey | None:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256" or jwk.get("alg", ALGORITHM) != ALGORITHM:
        return None
    key = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(dict(jwk)))
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


class TokenVerifier:
    """Verifies the users service's access tokens against its JWKS (fetched, cached by kid)."""

    def __init__(
        self,
        fetch_jwks: FetchJwks,
        issuer: str,
        audience: str,
        refresh_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch_jwks = fetch_jwks
        self.issuer = issuer
        self.audience = audience
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refuse("malformed", "the access token is not a JWT") from None
        if header.get("alg") != ALGORITHM:
            raise _refuse("algorithm", f"access tokens are signed with {ALGORITHM} only")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _refuse("malformed", "the access token names no key")
        key = await self._key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _refuse("expired", "the access token has expired") from None
        except jwt.PyJWTError:
            raise _refuse("invalid", "the access token is not valid") from None
        return claims

    async def _key(self, kid: str) -> ec.EllipticCurvePublicKey:
        if kid not in self._keys:
            async with self._lock:  # one refetch for many callers with the same new kid
                due = self._fetched_at is None or self.clock() - self._fetched_at >= self.refresh_seconds
                if kid not in self._keys and due:
                    await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            raise _refuse("unknown_key", "the access token names no key of the users service")
        return key

    async def _refresh(self) -> None:
        jwks = await self.fetch_jwks()
        self._fetched_at = self.clock()
        keys = {}
        for jwk in jwks:
            public = _public_key(jwk)
            if public is not None and jwk.get("kid"):
                keys[jwk["kid"]] = public
        self._keys = keys  # a key dropped from the JWKS stops verifying at once


def scope_name(scope: merchants_pb.ApiKeyScope.ValueType) -> str:
    """An API key scope as the policy names it: API_KEY_SCOPE_PAYMENTS_WRITE -> payments:write."""
    resource, _, action = (
        merchants_pb.ApiKeyScope.Name(scope).removeprefix("API_KEY_SCOPE_").lower().rpartition("_")
    )
    return f"{resource}:{action}"


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def current_principal() -> Principal | None:
    """The principal of the public RPC being served; None inside an internal RPC, whose
    callers the allowlist already restricts to services."""
    return _principal.get()


def set_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _principal.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    _principal.reset(token)


class EdgeAuthenticator:
    """Turns a call's credential or mTLS identity into its principal, asking the users
    service for its JWKS and the merchants service about API keys."""

    def __init__(
        self,
        verifier: TokenVerifier,
        authenticate_key: Callable[[ApiKey], Awaitable[Principal]],
        require_identity: bool,
    ) -> None:
        self.verifier = verifier
        self.authenticate_key = authenticate_key
        self.require_identity = require_identity

    @classmethod
    def over(cls, peers: Peers, require_identity: bool) -> EdgeAuthenticator:
        """An authenticator calling the users and merchants services through `peers`."""

        async def fetch_jwks() -> list[dict[str, str]]:
            reply = await peers.stub("users", UserServiceStub).GetJwks(users_pb.GetJwksRequest())
            return [{f.name: v for f, v in jwk.ListFields()} for jwk in reply.keys]

        async def authenticate_key(key: ApiKey) -> Principal:
            reply = await peers.stub("merchants", MerchantsServiceStub).AuthenticateApiKey(
                merchants_pb.AuthenticateApiKeyRequest(public_id=key.public_id, secret=key.secret)
            )
            return Principal(Kind.MERCHANT, reply.merchant_id, frozenset(scope_name(s) for s in reply.scopes))

        return cls(TokenVerifier(fetch_jwks, ISSUER, AUDIENCE), authenticate_key, require_identity)

    async def principal(self, metadata: Iterable[tuple[str, Any]], caller: Caller) -> Principal:
        found = credential(metadata)
        if isinstance(found, BearerToken):
            return Principal.from_claims(await self.verifier.verify(found.token))
        if isinstance(found, ApiKey):
            return await self.authenticate_key(found)
        if caller.verified and caller.name == OPERATOR:
            return Principal(Kind.OPERATOR, OPERATOR)
        if caller.verified and caller.name in BY_NAME:
            return Principal(Kind.SERVICE, caller.name)
        if not caller.verified and not self.require_identity:
            # INTERPAY_PLAINTEXT=1: nobody has an identity, so a call without a credential
            # is taken as a peer's, the way internal RPCs admit `unverified:` callers.
            return Principal(Kind.SERVICE, str(caller))
        raise _refuse("missing", "this call needs `authorization: Bearer <token>` or an API key")
