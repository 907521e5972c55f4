"""The vault's cryptography, all from the `cryptography` package.

Key hierarchy:

    KEK (32 bytes, a file from the secret store, never in the database)
     ├── wraps each data key version: AES-256-GCM, random 96-bit nonce, the version as
     │   associated data (a wrapped key moved to another version's row fails to unwrap)
     ├── HKDF-SHA256 "interpay/vault/card-fingerprint/v1"  -> the fingerprint key
     ├── HKDF-SHA256 "interpay/vault/request-digest/v1"    -> the idempotency digest key
     └── HKDF-SHA256 "interpay/vault/kek-id/v1"            -> the KEK's public identifier
    DEK (32 random bytes per version, stored only wrapped)
     └── encrypts each card: AES-256-GCM, random 96-bit nonce, the token as associated
         data (a ciphertext moved to another token fails to decrypt)

No object here shows key material, a card number or a cardholder name in its repr.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.framework.config import ConfigError
from services.vault.domain.card import CardSecret

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
WRAPPED_KEY_BYTES = NONCE_BYTES + KEY_BYTES + TAG_BYTES

FINGERPRINT_INFO = b"interpay/vault/card-fingerprint/v1"
REQUEST_DIGEST_INFO = b"interpay/vault/request-digest/v1"
KEK_ID_INFO = b"interpay/vault/kek-id/v1"


class KeyUnwrapFailed(RuntimeError):
    """A wrapped data key did not authenticate under this KEK: the wrong KEK, or a
    tampered row."""


class CiphertextTampered(RuntimeError):
    """A card's ciphertext did not authenticate: tampered, or moved to another token."""


def derive(kek: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """A subkey of the KEK for one purpose, independent of the KEK and of every other
    purpose's subkey (HKDF, RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(kek)


class DataEncryptionKey:
    """One unwrapped data key version, held in memory only."""

    __slots__ = ("_aead", "version")

    def __init__(self, version: int, material: bytes) -> None:
        if len(material) != KEY_BYTES:
            raise ValueError("a data key is 32 bytes")
        self.version = version
        self._aead = AESGCM(material)

    def __repr__(self) -> str:
        return f"DataEncryptionKey(version={self.version})"

    def seal(self, token: uuid.UUID, secret: CardSecret) -> SealedCard:
        nonce = os.urandom(NONCE_BYTES)
        plaintext = json.dumps(
            {
                "pan": secret.pan,
                "expiry_month": secret.expiry_month,
                "expiry_year": secret.expiry_year,
                "cardholder_name": secret.cardholder_name,
            },
            separators=(",", ":"),
        ).encode()
        return SealedCard(self.version, nonce, self._aead.encrypt(nonce, plaintext, token.bytes))

    def open(self, token: uuid.UUID, sealed: SealedCard) -> CardSecret:
        if sealed.dek_version != self.version:
            raise ValueError(f"card sealed under version {sealed.dek_version}, not {self.version}")
        try:
            plaintext = self._aead.decrypt(sealed.nonce, sealed.ciphertext, token.bytes)
        except InvalidTag:
            raise CiphertextTampered(
                f"the ciphertext of card {token} (data key version {self.version}) failed authentication"
            ) from None
        fields = json.loads(plaintext)
        return CardSecret(
            pan=fields["pan"],
            expiry_month=fields["expiry_month"],
            expiry_year=fields["expiry_year"],
            cardholder_name=fields["cardholder_name"],
        )


@dataclass(frozen=True)
class SealedCard:
    """A card's ciphertext as stored: the data key version, the nonce, and the
    AES-GCM ciphertext with its tag."""

    dek_version: int
    nonce: bytes
    ciphertext: bytes


class KeyEncryptionKey:
    """The root of the hierarchy. Only its identifier (derived, one-way) ever leaves it."""

    __slots__ = ("_aead", "_fingerprint_key", "_request_digest_key", "key_id")

    def __init__(self, material: bytes) -> None:
        if len(material) != KEY_BYTES:
            raise ValueError(f"the key-encryption key must be {KEY_BYTES} bytes, not {len(material)}")
        self._aead = AESGCM(material)
        self._fingerprint_key = derive(material, FINGERPRINT_INFO)
        self._request_digest_key = derive(material, REQUEST_DIGEST_INFO)
        self.key_id = "kek-" + derive(material, KEK_ID_INFO, 8).hex()

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(key_id={self.key_id!r})"

    @classmethod
    def from_file(cls, path: str) -> KeyEncryptionKey:
        try:
            material = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the vault's key-encryption key file {path}: {exc}") from exc
        try:
            return cls(material)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    @staticmethod
    def _wrap_context(version: int) -> bytes:
        return f"interpay/vault/dek/v{version}".encode()

    def wrap(self, version: int, dek: bytes) -> bytes:
        """nonce || AES-256-GCM(KEK, dek, associated data = the version)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, dek, self._wrap_context(version))

    def unwrap(self, version: int, wrapped: bytes) -> DataEncryptionKey:
        try:
            material = self._aead.decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], self._wrap_context(version)
            )
        except InvalidTag:
            raise KeyUnwrapFailed(f"data key version {version} does not unwrap under {self.key_id}") from None
        return DataEncryptionKey(version, material)

    def fingerprint(self, pan: str) -> str:
        """HMAC-SHA256 of the card number under the fingerprint key, lower-case hex: the
        same number always has the same fingerprint, and without the key it cannot be
        reversed by trying the few candidates a BIN and last four digits leave."""
        return hmac.new(self._fingerprint_key, pan.encode(), hashlib.sha256).hexdigest()

    def request_digest(self, secret: CardSecret) -> str:
        """A keyed digest of a TokenizeCard request, to recognise a retried request under
        the same idempotency key without storing what it asked."""
        canonical = json.dumps(
            [secret.pan, secret.expiry_month, secret.expiry_year, secret.cardholder_name],
            separators=(",", ":"),
        )
        return hmac.new(self._request_digest_key, canonical.encode(), hashlib.sha256).hexdigest()


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)
