"""Encryption of the webhook signing secrets at rest.

A signing secret cannot be stored as a hash: every delivery must be signed with it
(HMAC-SHA256), so the service must be able to read it back. It is sealed with
AES-256-GCM under a key that lives outside the database, and bound to its endpoint's id
(the AEAD's associated data), so a ciphertext copied onto another row does not open.
Each ciphertext records the fingerprint of the key that sealed it, so a new key can be
introduced later without guessing which one opens what.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.framework.config import ConfigError
from services.framework.topology import PROFILES

KEY_FILE_VARIABLE = "INTERPAY_MERCHANTS_SECRETS_KEY_FILE"
_NONCE_BYTES = 12
_ROOT = Path(__file__).resolve().parents[3]


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError(f"the merchants' secrets key must be 32 bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"interpay-merchants-secrets-key:" + key).hexdigest()[:16]

    def seal(self, secret: str, endpoint_id: uuid.UUID) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret.encode(), endpoint_id.bytes)

    def open(self, sealed: bytes, key_id: str, endpoint_id: uuid.UUID) -> str:
        """The secret (raises if sealed under another key, for another endpoint, or altered)."""
        if key_id != self.key_id:
            raise ValueError(f"sealed under key {key_id}, this box holds {self.key_id}")
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, endpoint_id.bytes).decode()

    @classmethod
    def from_environment(cls) -> SecretBox:
        return cls(key_file().read_bytes())


def key_file() -> Path:
    """The key's file: INTERPAY_MERCHANTS_SECRETS_KEY_FILE (mounted from the cluster's
    secret store in Kubernetes). A local mesh (INTERPAY_PROFILE dev, test or bench) that
    does not set it gets a random key generated once under its own .data/<profile>/, the
    way scripts/mesh.py keeps the vault's key; anywhere else a missing key stops start-up."""
    configured = os.environ.get(KEY_FILE_VARIABLE, "").strip()
    if configured:
        return Path(configured)
    profile = os.environ.get("INTERPAY_PROFILE", "").strip()
    if profile not in PROFILES:
        raise ConfigError(f"environment variable {KEY_FILE_VARIABLE} is required")
    path = _ROOT / ".data" / profile / "merchants-secrets-key.bin"
    if not path.exists():
        # Written aside and linked into place: two replicas starting at once agree on one
        # key, and neither can read a half-written file.
        draft = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(os.urandom(32))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path
