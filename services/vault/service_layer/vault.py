"""The vault's use cases, each one database transaction, each state change audited in
that same transaction.

Nothing here logs, or puts into an error, a card number, a cardholder name or key
material; log lines name tokens and key versions only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from services.framework.db import Database
from services.framework.errors import FailedPrecondition, Unavailable
from services.vault.adapters.crypto import CiphertextTampered, KeyEncryptionKey, SealedCard, new_data_key
from services.vault.adapters.repository import VaultRepository
from services.vault.domain.card import Card, CardNotFound, CardSecret, check_not_expired, check_pan
from services.vault.domain.keys import DataKey, KeyState, check_rotation
from services.vault.service_layer.keyring import SYSTEM_CALLER, KeyRing

log = logging.getLogger("interpay.vault")

# A tokenisation that meets a rotation committed by another replica retries with the new
# active version; several rotations in a row within one request would be an operator loop.
_ROTATION_RETRIES = 3
IDEMPOTENCY_RETENTION_SECONDS = 24 * 3600


class IdempotencyMismatch(FailedPrecondition):
    default_reason = "IDEMPOTENCY_MISMATCH"


@dataclass(frozen=True)
class KeyStatus:
    active_version: int
    data_keys: list[DataKey]
    cards_pending_reencryption: int
    key_encryption_key_id: str


@dataclass(frozen=True)
class Maintenance:
    """What one run of the background job did."""

    reencrypted: int
    retired_versions: list[int]
    cards_pending_reencryption: int


class Vault:
    def __init__(
        self,
        db: Database,
        kek: KeyEncryptionKey,
        keyring: KeyRing,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.kek = kek
        self.keyring = keyring
        self.now = now

    # -- cards --------------------------------------------------------------------------
    async def tokenize(self, secret: CardSecret, caller: str, idempotency_key: str = "") -> Card:
        """Validates and encrypts a card under the active data key and returns a new token.
        With an idempotency key, a retry of the same request returns the first token."""
        brand = check_pan(secret.pan)
        check_not_expired(secret.expiry_month, secret.expiry_year, self.now())
        fingerprint = self.kek.fingerprint(secret.pan)
        digest = self.kek.request_digest(secret) if idempotency_key else ""
        token = uuid.uuid4()
        for _ in range(_ROTATION_RETRIES):
            async with self.db.transaction() as conn:
                repo = VaultRepository(conn)
                dek = await self.keyring.active(repo)
                if not await repo.hold_if_active(dek.version):
                    await self.keyring.refresh(repo)  # another replica rotated: use the new version
                    continue
                if idempotency_key and not await repo.claim_request(idempotency_key, digest, token):
                    return await self._replay(repo, idempotency_key, digest)
                card = await repo.insert_card(
                    token,
                    brand,
                    secret.last4,
                    (secret.expiry_month, secret.expiry_year),
                    fingerprint,
                    dek.seal(token, secret),
                )
                await repo.audit("CARD_TOKENIZED", caller, token=token, key_version=dek.version)
                return card
        raise Unavailable("the data key is being rotated; retry")

    @staticmethod
    async def _replay(repo: VaultRepository, idempotency_key: str, digest: str) -> Card:
        recorded_digest, token = await repo.recorded_request(idempotency_key)
        if recorded_digest != digest:
            raise IdempotencyMismatch(
                "this Idempotency-Key was already used to tokenise a different card",
                metadata={"idempotency_key": idempotency_key},
            )
        card = await repo.get_card(token)
        if card is None:
            raise CardNotFound(token)  # tokenised by the first request, deleted since
        return card

    async def get(self, token: uuid.UUID) -> Card:
        async with self.db.transaction() as conn:
            card = await VaultRepository(conn).get_card(token)
        if card is None:
            raise CardNotFound(token)
        return card

    async def delete(self, token: uuid.UUID, caller: str) -> None:
        """Crypto-shreds a card: its ciphertext and details are erased, its token stays as
        a tombstone so a second delete succeeds and the token is never reused."""
        async with self.db.transaction() as conn:
            repo = VaultRepository(conn)
            erased = await repo.shred_card(token)
            if erased is None:
                raise CardNotFound(token)
            if erased:
                await repo.audit("CARD_DELETED", caller, token=token)

    async def detokenize(
        self, token: uuid.UUID, payment_id: uuid.UUID, caller: str
    ) -> tuple[Card, CardSecret]:
        """The card in clear, for the processor adapter's one authorisation call; audited
        with the caller and the payment. A card under an older data key version is
        re-encrypted under the active one in the same transaction."""
        async with self.db.transaction() as conn:
            repo = VaultRepository(conn)
            found = await repo.lock_sealed_card(token)
            if found is None:
                raise CardNotFound(token)
            card, sealed = found
            secret = (await self.keyring.get(repo, sealed.dek_version)).open(token, sealed)
            await repo.audit(
                "CARD_DETOKENIZED", caller, token=token, payment_id=payment_id, key_version=sealed.dek_version
            )
            if sealed.dek_version != self.keyring.active_version:
                active = await self.keyring.active(repo)
                if await repo.hold_if_active(active.version):
                    await repo.reseal_card(token, active.seal(token, secret))
                else:
                    await self.keyring.refresh(repo)  # the sweep will re-encrypt it
        return card, secret

    # -- data keys ----------------------------------------------------------------------
    async def rotate(self, reason: str, expected_active_version: int, caller: str) -> tuple[DataKey, int]:
        """Makes a new data key version active; the previous one becomes DECRYPT_ONLY.
        Waits for in-flight writers under the previous version to commit."""
        material = new_data_key()
        async with self.db.transaction() as conn:
            repo = VaultRepository(conn)
            previous = await repo.lock_active_key()
            check_rotation(previous, expected_active_version)
            version = previous + 1
            key = await repo.replace_active_key(
                previous, version, self.kek.wrap(version, material), self.kek.key_id
            )
            await repo.audit(
                "DATA_KEY_ROTATED",
                caller,
                key_version=version,
                detail=f"replaces version {previous}: {reason}",
            )
        self.keyring.install(version, material)
        log.info("data key rotated", extra={"key_version": version, "previous_version": previous})
        return key, previous

    async def key_status(self) -> KeyStatus:
        async with self.db.transaction() as conn:
            keys = await VaultRepository(conn).stored_keys()
        active = next(k.version for k in keys if k.state is KeyState.ACTIVE)
        return KeyStatus(
            active_version=active,
            data_keys=keys,
            cards_pending_reencryption=sum(k.card_count for k in keys if k.version != active),
            key_encryption_key_id=self.kek.key_id,
        )

    # -- background ---------------------------------------------------------------------
    async def reencrypt_stale_cards(self, limit: int) -> int:
        """Re-encrypts up to `limit` cards still under an older version, in one
        transaction. Replicas sweep at once without waiting on each other (SKIP LOCKED)."""
        async with self.db.transaction() as conn:
            repo = VaultRepository(conn)
            active_version = await self.keyring.refresh(repo)
            if not await repo.hold_if_active(active_version):
                return 0  # a rotation is committing; the next run sweeps towards it
            stale = await repo.lock_stale_cards(active_version, limit)
            if not stale:
                return 0
            active = await self.keyring.get(repo, active_version)
            resealed: list[tuple[uuid.UUID, SealedCard]] = []
            for token, sealed in stale:
                try:
                    secret = (await self.keyring.get(repo, sealed.dek_version)).open(token, sealed)
                except CiphertextTampered:
                    # Left where it is, under its version, which therefore is never retired.
                    log.error(
                        "card ciphertext failed authentication; not re-encrypted", extra={"token": str(token)}
                    )
                    continue
                resealed.append((token, active.seal(token, secret)))
            if resealed:
                await repo.reseal_cards(resealed)
        return len(resealed)

    async def retire_drained_keys(self, retain_seconds: float) -> list[int]:
        """Erases the material of DECRYPT_ONLY versions that no card needs any more, once
        they have been replaced for `retain_seconds`."""
        retired = []
        async with self.db.transaction() as conn:
            repo = VaultRepository(conn)
            for version in await repo.drained_keys(retain_seconds):
                if await repo.destroy_key(version):
                    await repo.audit(
                        "DATA_KEY_RETIRED", SYSTEM_CALLER, key_version=version, detail="no card left; erased"
                    )
                    retired.append(version)
        for version in retired:
            self.keyring.forget(version)
            log.info("data key retired", extra={"key_version": version})
        return retired

    async def maintain(self, batch: int, retain_seconds: float) -> Maintenance:
        """One run of the background job: a bounded re-encryption batch, retirement of
        drained versions, and expiry of day-old idempotency keys."""
        reencrypted = await self.reencrypt_stale_cards(batch)
        retired = await self.retire_drained_keys(retain_seconds)
        async with self.db.transaction() as conn:
            repo = VaultRepository(conn)
            await repo.forget_requests(IDEMPOTENCY_RETENTION_SECONDS, batch)
            pending = await repo.cards_pending_reencryption(self.keyring.active_version)
        if reencrypted:
            log.info("cards re-encrypted", extra={"count": reencrypted, "pending": pending})
        return Maintenance(reencrypted, retired, pending)
