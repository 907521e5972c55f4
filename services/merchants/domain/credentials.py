"""The secrets merchants hold: API key public ids and secrets, webhook signing secrets.

API key secrets are 256-bit random tokens, so one SHA-256 is all the storage needs: a slow
password hash (argon2, bcrypt) exists to make guessing a low-entropy password expensive,
and nobody can guess 2^256 values however cheap each guess is. A slow hash would instead
put tens of milliseconds of CPU on every authenticated call, the platform's hot path.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PUBLIC_ID_PREFIX = "ipk_"
# Prefixes, not secrets: they let secret scanners recognise a leaked key.
SECRET_PREFIX = "isk_"  # noqa: S105
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105


def new_public_id() -> str:
    return PUBLIC_ID_PREFIX + secrets.token_hex(12)


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


# Compared against when the public id is unknown, so that path costs what a real one does.
_DECOY_HASH = hash_secret(new_secret())


def secret_matches(secret: str, stored_hash: bytes | None) -> bool:
    """Constant-time comparison of the presented secret's hash with the stored one."""
    matches = hmac.compare_digest(hash_secret(secret), stored_hash or _DECOY_HASH)
    return matches and stored_hash is not None
