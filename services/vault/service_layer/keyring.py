"""The data keys in memory: unwrapped on first use, by version, and which one is active.

A server resource: on start it creates data key version 1 if the vault has none, and
proves the KEK it was given unwraps the active version, so a wrong or replaced KEK file
stops the process at once instead of failing the first detokenisation.

Several replicas each hold a ring. The active version a ring remembers may be stale after
another replica rotated; writers check it under a lock in their transaction (see
adapters/repository.py) and refresh on a miss, so staleness costs a retry, never a card
written under a replaced version.
"""

from __future__ import annotations

import logging

from services.framework.config import ConfigError
from services.framework.db import Database
from services.vault.adapters.crypto import DataEncryptionKey, KeyEncryptionKey, KeyUnwrapFailed, new_data_key
from services.vault.adapters.repository import VaultRepository
from services.vault.domain.keys import KeyState

log = logging.getLogger("interpay.vault.keys")

SYSTEM_CALLER = "vault"  # the audit log's caller for what the vault does on its own


class KeyRing:
    def __init__(self, db: Database, kek: KeyEncryptionKey) -> None:
        self.db = db
        self.kek = kek
        self._keys: dict[int, DataEncryptionKey] = {}
        self.active_version = 0

    async def start(self) -> None:
        async with self.db.transaction() as conn:
            repo = VaultRepository(conn)
            material = new_data_key()
            if await repo.insert_first_key(self.kek.wrap(1, material), self.kek.key_id):
                await repo.audit("DATA_KEY_CREATED", SYSTEM_CALLER, key_version=1, detail="first data key")
                log.info("created data key", extra={"key_version": 1})
        async with self.db.transaction() as conn:
            repo = VaultRepository(conn)
            await self.refresh(repo)
            try:
                await self.get(repo, self.active_version)
            except KeyUnwrapFailed as exc:
                raise ConfigError(
                    f"{exc}: INTERPAY_VAULT_KEK_FILE does not hold the key that wrapped the vault's data keys"
                ) from None
        log.info("data keys ready", extra={"active_version": self.active_version, "kek_id": self.kek.key_id})

    async def close(self) -> None:
        self._keys.clear()

    async def refresh(self, repo: VaultRepository) -> int:
        """Re-reads which version is active and forgets versions that were retired."""
        states = await repo.key_states()
        foreign = sorted(
            {kek_id for _, state, kek_id in states if state is not KeyState.RETIRED} - {self.kek.key_id}
        )
        if foreign:
            raise ConfigError(
                f"data keys are wrapped by {', '.join(foreign)}, but INTERPAY_VAULT_KEK_FILE holds "
                f"{self.kek.key_id}"
            )
        for version, state, _ in states:
            if state is KeyState.ACTIVE:
                self.active_version = version
            elif state is KeyState.RETIRED:
                self._keys.pop(version, None)
        return self.active_version

    async def get(self, repo: VaultRepository, version: int) -> DataEncryptionKey:
        key = self._keys.get(version)
        if key is None:
            wrapped = await repo.wrapped_key(version)
            if wrapped is None:
                raise KeyUnwrapFailed(f"data key version {version} is not stored (retired)")
            key = self._keys[version] = self.kek.unwrap(version, wrapped)
        return key

    async def active(self, repo: VaultRepository) -> DataEncryptionKey:
        return await self.get(repo, self.active_version)

    def forget(self, version: int) -> None:
        self._keys.pop(version, None)

    def install(self, version: int, material: bytes) -> None:
        """A version this replica just created and made active."""
        self._keys[version] = DataEncryptionKey(version, material)
        self.active_version = max(self.active_version, version)
