"""SQL for the vault, on one connection inside the caller's transaction.

Locks, always in this order: a card row, then a data key row. Writers of card
ciphertexts hold the version they encrypt under with FOR SHARE and require it ACTIVE; a
rotation takes the active version with FOR NO KEY UPDATE (which waits for those writers,
and does not conflict with the KEY SHARE locks that the cards' foreign keys take). So no
card is ever written under a version a committed rotation has replaced, and a version
that is DECRYPT_ONLY only loses cards.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import AsyncConnection

from services.vault.adapters.crypto import SealedCard
from services.vault.domain.card import Card, CardBrand
from services.vault.domain.keys import DataKey, KeyState

_CARD_COLUMNS = "token, brand, last4, expiry_month, expiry_year, fingerprint, created_at"


def _card(row: dict[str, Any]) -> Card:
    return Card(
        token=row["token"],
        brand=CardBrand(row["brand"]),
        last4=row["last4"],
        expiry_month=row["expiry_month"],
        expiry_year=row["expiry_year"],
        fingerprint=row["fingerprint"],
        created_at=row["created_at"],
    )


def _sealed(row: dict[str, Any]) -> SealedCard:
    return SealedCard(row["dek_version"], bytes(row["nonce"]), bytes(row["ciphertext"]))


class VaultRepository:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    # -- data keys ----------------------------------------------------------------------
    async def insert_first_key(self, wrapped_key: bytes, kek_id: str) -> bool:
        """Version 1, unless any version exists (replicas starting at once create one)."""
        cur = await self.conn.execute(
            "INSERT INTO data_keys (version, state, wrapped_key, kek_id) "
            "SELECT 1, 'ACTIVE', %s, %s WHERE NOT EXISTS (SELECT 1 FROM data_keys) "
            "ON CONFLICT DO NOTHING RETURNING version",
            (wrapped_key, kek_id),
        )
        return await cur.fetchone() is not None

    async def key_states(self) -> list[tuple[int, KeyState, str]]:
        cur = await self.conn.execute("SELECT version, state, kek_id FROM data_keys ORDER BY version")
        return [(r["version"], KeyState(r["state"]), r["kek_id"]) for r in await cur.fetchall()]

    async def wrapped_key(self, version: int) -> bytes | None:
        """A version's wrapped material; None once RETIRED (or never created)."""
        cur = await self.conn.execute("SELECT wrapped_key FROM data_keys WHERE version = %s", (version,))
        row = await cur.fetchone()
        return bytes(row["wrapped_key"]) if row and row["wrapped_key"] is not None else None

    async def hold_if_active(self, version: int) -> bool:
        """Share-locks the version if it is still the active one, so no rotation can
        commit until this transaction does."""
        cur = await self.conn.execute(
            "SELECT 1 FROM data_keys WHERE version = %s AND state = 'ACTIVE' FOR SHARE", (version,)
        )
        return await cur.fetchone() is not None

    async def lock_active_key(self) -> int:
        cur = await self.conn.execute(
            "SELECT version FROM data_keys WHERE state = 'ACTIVE' FOR NO KEY UPDATE"
        )
        row = await cur.fetchone()
        assert row is not None, "the vault always has an active data key (created at start-up)"
        return int(row["version"])

    async def replace_active_key(
        self, active_version: int, new_version: int, wrapped_key: bytes, kek_id: str
    ) -> DataKey:
        await self.conn.execute(
            "UPDATE data_keys SET state = 'DECRYPT_ONLY', deactivated_at = now() "
            "WHERE version = %s AND state = 'ACTIVE'",
            (active_version,),
        )
        cur = await self.conn.execute(
            "INSERT INTO data_keys (version, state, wrapped_key, kek_id) VALUES (%s, 'ACTIVE', %s, %s) "
            "RETURNING version, state, created_at, deactivated_at",
            (new_version, wrapped_key, kek_id),
        )
        row = await cur.fetchone()
        assert row is not None
        return DataKey(row["version"], KeyState(row["state"]), 0, row["created_at"], row["deactivated_at"])

    async def stored_keys(self) -> list[DataKey]:
        """Every version whose material is still stored, newest first, with its cards."""
        cur = await self.conn.execute(
            "SELECT k.version, k.state, k.created_at, k.deactivated_at, "
            "  (SELECT count(*) FROM cards c WHERE c.dek_version = k.version) AS card_count "
            "FROM data_keys k WHERE k.state <> 'RETIRED' ORDER BY k.version DESC"
        )
        return [
            DataKey(r["version"], KeyState(r["state"]), r["card_count"], r["created_at"], r["deactivated_at"])
            for r in await cur.fetchall()
        ]

    async def drained_keys(self, retain_seconds: float) -> list[int]:
        """DECRYPT_ONLY versions replaced at least `retain_seconds` ago that no card uses,
        locked (skipping any another replica is retiring)."""
        cur = await self.conn.execute(
            "SELECT k.version FROM data_keys k WHERE k.state = 'DECRYPT_ONLY' "
            "AND k.deactivated_at <= now() - make_interval(secs => %s) "
            "AND NOT EXISTS (SELECT 1 FROM cards c WHERE c.dek_version = k.version) "
            "ORDER BY k.version FOR NO KEY UPDATE OF k SKIP LOCKED",
            (retain_seconds,),
        )
        return [r["version"] for r in await cur.fetchall()]

    async def destroy_key(self, version: int) -> bool:
        """Erases a drained version's material (the version row stays, RETIRED)."""
        cur = await self.conn.execute(
            "UPDATE data_keys SET state = 'RETIRED', wrapped_key = NULL, destroyed_at = now() "
            "WHERE version = %s AND state = 'DECRYPT_ONLY' "
            "AND NOT EXISTS (SELECT 1 FROM cards WHERE dek_version = %s) RETURNING version",
            (version, version),
        )
        return await cur.fetchone() is not None

    # -- cards --------------------------------------------------------------------------
    async def insert_card(
        self,
        token: uuid.UUID,
        brand: CardBrand,
        last4: str,
        expiry: tuple[int, int],
        fingerprint: str,
        sealed: SealedCard,
    ) -> Card:
        cur = await self.conn.execute(
            "INSERT INTO cards (token, brand, last4, expiry_month, expiry_year, fingerprint, "
            "dek_version, nonce, ciphertext, encrypted_at) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now()) RETURNING {_CARD_COLUMNS}",
            (
                token,
                brand.value,
                last4,
                *expiry,
                fingerprint,
                sealed.dek_version,
                sealed.nonce,
                sealed.ciphertext,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        return _card(row)

    async def get_card(self, token: uuid.UUID) -> Card | None:
        cur = await self.conn.execute(
            f"SELECT {_CARD_COLUMNS} FROM cards WHERE token = %s AND deleted_at IS NULL", (token,)
        )
        row = await cur.fetchone()
        return _card(row) if row else None

    async def lock_sealed_card(self, token: uuid.UUID) -> tuple[Card, SealedCard] | None:
        """A live card with its ciphertext, locked so that it cannot be deleted or
        re-encrypted underneath the caller."""
        cur = await self.conn.execute(
            f"SELECT {_CARD_COLUMNS}, dek_version, nonce, ciphertext FROM cards "
            f"WHERE token = %s AND deleted_at IS NULL FOR NO KEY UPDATE",
            (token,),
        )
        row = await cur.fetchone()
        return (_card(row), _sealed(row)) if row else None

    async def reseal_card(self, token: uuid.UUID, sealed: SealedCard) -> None:
        await self.conn.execute(
            "UPDATE cards SET dek_version = %s, nonce = %s, ciphertext = %s, encrypted_at = now() "
            "WHERE token = %s AND deleted_at IS NULL",
            (sealed.dek_version, sealed.nonce, sealed.ciphertext, token),
        )

    async def lock_stale_cards(self, active_version: int, limit: int) -> list[tuple[uuid.UUID, SealedCard]]:
        """Up to `limit` live cards under an older version, locked; cards another
        replica's sweep or a detokenisation holds are skipped, not waited for."""
        cur = await self.conn.execute(
            "SELECT token, dek_version, nonce, ciphertext FROM cards "
            "WHERE dek_version IS NOT NULL AND dek_version <> %s "
            "ORDER BY dek_version LIMIT %s FOR NO KEY UPDATE SKIP LOCKED",
            (active_version, limit),
        )
        return [(r["token"], _sealed(r)) for r in await cur.fetchall()]

    async def reseal_cards(self, resealed: list[tuple[uuid.UUID, SealedCard]]) -> None:
        values = ", ".join(["(%s::uuid, %s::integer, %s::bytea, %s::bytea)"] * len(resealed))
        params: list[Any] = []
        for token, sealed in resealed:
            params += [token, sealed.dek_version, sealed.nonce, sealed.ciphertext]
        await self.conn.execute(
            "UPDATE cards c SET dek_version = v.dek_version, nonce = v.nonce, "
            "ciphertext = v.ciphertext, encrypted_at = now() "
            f"FROM (VALUES {values}) AS v(token, dek_version, nonce, ciphertext) "
            "WHERE c.token = v.token AND c.deleted_at IS NULL",
            params,
        )

    async def cards_pending_reencryption(self, active_version: int) -> int:
        cur = await self.conn.execute(
            "SELECT count(*) AS n FROM cards WHERE dek_version IS NOT NULL AND dek_version <> %s",
            (active_version,),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row["n"])

    async def shred_card(self, token: uuid.UUID) -> bool | None:
        """Erases a card's ciphertext and details, keeping its token as a tombstone.
        True if it was erased now, False if it already was, None if it never existed."""
        cur = await self.conn.execute(
            "UPDATE cards SET brand = NULL, last4 = NULL, expiry_month = NULL, expiry_year = NULL, "
            "fingerprint = NULL, dek_version = NULL, nonce = NULL, ciphertext = NULL, "
            "encrypted_at = NULL, deleted_at = now() WHERE token = %s AND deleted_at IS NULL "
            "RETURNING token",
            (token,),
        )
        if await cur.fetchone() is not None:
            return True
        cur = await self.conn.execute("SELECT 1 FROM cards WHERE token = %s", (token,))
        return False if await cur.fetchone() is not None else None

    # -- idempotency --------------------------------------------------------------------
    async def claim_request(self, idempotency_key: str, request_digest: str, token: uuid.UUID) -> bool:
        """Claims the key for this request; a concurrent claim of the same key waits for
        this transaction. False when the key was already taken."""
        cur = await self.conn.execute(
            "INSERT INTO tokenize_requests (idempotency_key, request_digest, token) VALUES (%s, %s, %s) "
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING token",
            (idempotency_key, request_digest, token),
        )
        return await cur.fetchone() is not None

    async def recorded_request(self, idempotency_key: str) -> tuple[str, uuid.UUID]:
        cur = await self.conn.execute(
            "SELECT request_digest, token FROM tokenize_requests WHERE idempotency_key = %s",
            (idempotency_key,),
        )
        row = await cur.fetchone()
        assert row is not None, "called after the key was found taken"
        return row["request_digest"], row["token"]

    async def forget_requests(self, older_than_seconds: float, limit: int) -> int:
        cur = await self.conn.execute(
            "DELETE FROM tokenize_requests WHERE idempotency_key IN ("
            "  SELECT idempotency_key FROM tokenize_requests "
            "  WHERE created_at < now() - make_interval(secs => %s) LIMIT %s)",
            (older_than_seconds, limit),
        )
        return cur.rowcount

    # -- audit --------------------------------------------------------------------------
    async def audit(
        self,
        action: str,
        caller: str,
        *,
        token: uuid.UUID | None = None,
        payment_id: uuid.UUID | None = None,
        key_version: int | None = None,
        detail: str = "",
    ) -> None:
        await self.conn.execute(
            "INSERT INTO audit_log (action, token, payment_id, key_version, caller, detail) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (action, token, payment_id, key_version, caller, detail),
        )
