"""Access tokens: signed, verifiable by the published key, and refused when tampered with."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.users.adapters.tokens import TokenIssuer


def _issuer() -> TokenIssuer:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return TokenIssuer(pem, ttl_seconds=60)


def test_a_token_verifies_against_its_jwk_and_names_its_kid() -> None:
    issuer = _issuer()
    user = uuid.uuid4()
    token = issuer.issue(user)
    assert jwt.get_unverified_header(token)["kid"] == issuer.kid
    public = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(issuer.jwk))
    claims = jwt.decode(token, public, algorithms=["ES256"], audience="interpay")  # type: ignore[arg-type]
    assert claims["sub"] == str(user)


def test_expired_wrong_key_and_alg_none_tokens_are_refused() -> None:
    issuer, other = _issuer(), _issuer()
    user = uuid.uuid4()
    with pytest.raises(jwt.ExpiredSignatureError):
        issuer.verify(issuer.issue(user, now=time.time() - 3600))
    with pytest.raises(jwt.InvalidSignatureError):
        issuer.verify(other.issue(user))
    header, payload, _ = issuer.issue(user).split(".")
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    with pytest.raises(jwt.InvalidTokenError):
        issuer.verify(f"{unsigned}.{payload}.")
