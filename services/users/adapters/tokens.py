"""Access tokens: ES256-signed JWTs with a `kid`, and the JWKS that verifies them.

The signing key is a PEM file (generated per mesh by scripts/mesh.py; a secret mounted
from the cluster's secret store in Kubernetes). The `kid` is the key's RFC 7638
thumbprint, so rotating the key rotates the kid and verifiers pick the right key.

Rotation: a new signing key is deployed with the previous key listed as retired
(`INTERPAY_JWT_RETIRED_KEY_FILES`, PEM files, public or private). Retired keys sign
nothing but stay in the JWKS, and keep verifying, until every token they signed has
expired (one access-token lifetime); then they are dropped from the list.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "https://users.interpay.dev"
AUDIENCE = "interpay"
ALGORITHM = "ES256"


def _public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    if b"PRIVATE KEY" in pem:
        private = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise ValueError("a JWT key must be an EC P-256 key")
        return private.public_key()
    public = serialization.load_pem_public_key(pem)
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ValueError("a JWT key must be an EC P-256 key")
    return public


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The key as a JWK whose `kid` is its RFC 7638 thumbprint."""
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    thumb_input = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    kid = base64.urlsafe_b64encode(hashlib.sha256(thumb_input.encode()).digest()).decode().rstrip("=")
    return {**jwk, "kid": kid, "use": "sig", "alg": ALGORITHM}


class TokenIssuer:
    def __init__(
        self, private_key_pem: bytes, ttl_seconds: int = 900, retired_key_pems: Sequence[bytes] = ()
    ) -> None:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the JWT signing key must be an EC P-256 private key")
        self.private_key = key
        self.ttl_seconds = ttl_seconds
        self.jwk = public_jwk(key.public_key())
        self.kid = self.jwk["kid"]
        self._verifying: dict[str, ec.EllipticCurvePublicKey] = {self.kid: key.public_key()}
        self.jwks = [self.jwk]
        for pem in retired_key_pems:
            public = _public_key(pem)
            jwk = public_jwk(public)
            if jwk["kid"] not in self._verifying:
                self._verifying[jwk["kid"]] = public
                self.jwks.append(jwk)

    @classmethod
    def from_file(cls, path: str, retired_paths: Sequence[str] = ()) -> TokenIssuer:
        return cls(Path(path).read_bytes(), retired_key_pems=[Path(p).read_bytes() for p in retired_paths])

    def issue(self, user_id: uuid.UUID, now: float | None = None, session_id: uuid.UUID | None = None) -> str:
        issued = int(now if now is not None else time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(user_id),
            "iat": issued,
            "exp": issued + self.ttl_seconds,
            "jti": str(uuid.uuid4()),
            "roles": ["user"],
        }
        if session_id is not None:
            claims["sid"] = str(session_id)
        return jwt.encode(claims, self.private_key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def verify(self, token: str) -> dict[str, Any]:
        """Verifies signature (with the key its `kid` names: the current or a retired
        one), issuer, audience and expiry; used by tests, peers and the audit's actor."""
        kid = jwt.get_unverified_header(token).get("kid")
        key = self._verifying.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise jwt.InvalidSignatureError("the token names no key of this issuer")
        return jwt.decode(token, key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER)
