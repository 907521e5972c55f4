"""Mints an operator's access token for a local mesh: an ES256 JWT with the admin role,
signed with the mesh's own JWT key (`.data/<profile>/jwt-signing-key.pem`, the key
scripts/mesh.py gives the users service), so every service's edge authentication accepts
it as an `operator` principal.

    curl -H "authorization: Bearer $(.venv/bin/python scripts/operator_token.py)" \\
        localhost:8080/v1/merchants

Only whoever can read the mesh's key file can mint one, which on a local mesh is the
engineer who started it. A real deployment issues operator tokens from its identity
provider instead; there is no such file to read.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

import jwt  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from services.framework.edge_auth import ADMIN_ROLE  # noqa: E402
from services.framework.topology import PROFILES  # noqa: E402
from services.users.adapters.tokens import ALGORITHM, AUDIENCE, ISSUER, public_jwk  # noqa: E402

DEFAULT_TTL_SECONDS = 3600


def signing_key_file(profile: str) -> Path:
    return ROOT / ".data" / profile / "jwt-signing-key.pem"


def mint(profile: str, ttl_seconds: int = DEFAULT_TTL_SECONDS, subject: str = "") -> str:
    """An admin-role access token for the mesh of `profile`, valid for `ttl_seconds`."""
    path = signing_key_file(profile)
    if not path.is_file():
        raise SystemExit(
            f"{path} does not exist: start the mesh first (scripts/mesh.py up --profile {profile})"
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SystemExit(f"{path} is not an EC private key")
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject or f"operator:{getpass.getuser()}",
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": str(uuid.uuid4()),
        "roles": [ADMIN_ROLE],
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": public_jwk(key.public_key())["kid"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="dev", choices=sorted(PROFILES))
    parser.add_argument("--ttl", type=int, default=DEFAULT_TTL_SECONDS, help="lifetime in seconds")
    parser.add_argument("--subject", default="", help="who the token names (default operator:<login>)")
    args = parser.parse_args()
    print(mint(args.profile, args.ttl, args.subject))


if __name__ == "__main__":
    main()
