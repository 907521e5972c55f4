"""Access tokens: ES256-signed JWTs with a `kid`, and the JWKS that verifies them.

The signing key is a PEM file (generated per mesh by scripts/mesh.py; a secret mounted
from the cluster's secret store in Kubernetes). The `kid` is the key's RFC 7638
thumbprint, so rotating the key rotates the kid and verifiers pick the right key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "https://users.interpay.dev"
AUDIENCE = "interpay"
ALGORITHM = "ES256"


class TokenIssuer:
    def __init__(self, private_key_pem: bytes, ttl_seconds: int = 900) -> None:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the JWT signing key must be an EC P-256 private key")
        self.private_key = key
        self.ttl_seconds = ttl_seconds
        public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        thumb_input = json.dumps(
            {k: public_jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
        )
        self.kid = (
            base64.urlsafe_b64encode(hashlib.sha256(thumb_input.encode()).digest()).decode().rstrip("=")
        )
        self.jwk = {**public_jwk, "kid": self.kid, "use": "sig", "alg": ALGORITHM}

    @classmethod
    def from_file(cls, path: str) -> TokenIssuer:
        return cls(Path(path).read_bytes())

    def issue(self, user_id: uuid.UUID, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(user_id),
            "iat": issued,
            "exp": issued + self.ttl_seconds,
            "jti": str(uuid.uuid4()),
            "roles": ["user"],
        }
        return jwt.encode(claims, self.private_key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def verify(self, token: str) -> dict[str, Any]:
        """Verifies signature, issuer, audience and expiry; used by tests and peers."""
        return jwt.decode(
            token, self.private_key.public_key(), algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER
        )
