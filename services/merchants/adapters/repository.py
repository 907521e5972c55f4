"""SQL for merchants, API keys, webhook endpoints, Idempotency-Key records and the audit
log, on one connection inside the caller's transaction."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from services.merchants.domain.model import (
    ApiKey,
    ApiKeyScope,
    IdempotencyKey,
    IdempotencyKeyReused,
    Merchant,
    MerchantState,
    OnboardMerchant,
    PayoutAccount,
    WebhookEndpoint,
)

_MERCHANT_COLUMNS = (
    "merchant_id, legal_name, display_name, contact_email, country_code, settlement_currency, "
    "settlement_wallet_id, payout_account, fee_bps, state, suspend_reason, created_at, updated_at"
)
_KEY_COLUMNS = (
    "key_id, merchant_id, public_id, scopes, rate_limit_per_minute, expires_at, revoked_at, "
    "replaced_by_key_id, last_used_at, created_at"
)
_ENDPOINT_COLUMNS = "endpoint_id, merchant_id, url, event_types, description, created_at, deleted_at"


def _merchant(row: dict[str, Any]) -> Merchant:
    return Merchant(
        merchant_id=row["merchant_id"],
        legal_name=row["legal_name"],
        display_name=row["display_name"],
        contact_email=row["contact_email"],
        country_code=row["country_code"],
        settlement_currency=row["settlement_currency"],
        settlement_wallet_id=row["settlement_wallet_id"],
        payout_account=PayoutAccount(**row["payout_account"]),
        fee_bps=row["fee_bps"],
        state=MerchantState(row["state"]),
        suspend_reason=row["suspend_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _api_key(row: dict[str, Any]) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        merchant_id=row["merchant_id"],
        public_id=row["public_id"],
        scopes=tuple(ApiKeyScope(s) for s in row["scopes"]),
        rate_limit_per_minute=row["rate_limit_per_minute"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        replaced_by_key_id=row["replaced_by_key_id"],
        last_used_at=row["last_used_at"],
        created_at=row["created_at"],
    )


def _endpoint(row: dict[str, Any]) -> WebhookEndpoint:
    return WebhookEndpoint(
        endpoint_id=row["endpoint_id"],
        merchant_id=row["merchant_id"],
        url=row["url"],
        event_types=tuple(row["event_types"]),
        description=row["description"],
        created_at=row["created_at"],
        deleted_at=row["deleted_at"],
    )


class MerchantRepository:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    # -- Idempotency-Key ----------------------------------------------------------------
    async def claim_idempotency_key(self, key: IdempotencyKey, resource_id: uuid.UUID) -> uuid.UUID | None:
        """Records that `key` creates `resource_id`. None when this call is the first;
        otherwise the id the key's first call created. A concurrent first call holding
        the key makes this one wait on the unique index until it commits or rolls back."""
        cur = await self.conn.execute(
            "INSERT INTO idempotency_keys (rpc, idempotency_key, request_hash, resource_id) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING resource_id",
            (key.rpc, key.key, key.request_hash, resource_id),
        )
        if await cur.fetchone() is not None:
            return None
        cur = await self.conn.execute(
            "SELECT request_hash, resource_id FROM idempotency_keys WHERE rpc = %s AND idempotency_key = %s",
            (key.rpc, key.key),
        )
        row = await cur.fetchone()
        assert row is not None  # the conflicting row is committed, so this statement sees it
        if bytes(row["request_hash"]) != key.request_hash:
            raise IdempotencyKeyReused(key)
        return row["resource_id"]  # type: ignore[no-any-return]

    async def purge_idempotency_keys(self, created_before: datetime) -> int:
        cur = await self.conn.execute("DELETE FROM idempotency_keys WHERE created_at < %s", (created_before,))
        return cur.rowcount

    # -- audit --------------------------------------------------------------------------
    async def audit(
        self,
        merchant_id: uuid.UUID,
        subject_type: str,
        subject_id: uuid.UUID,
        action: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        await self.conn.execute(
            "INSERT INTO merchant_audit_log (merchant_id, subject_type, subject_id, action, details) "
            "VALUES (%s, %s, %s, %s, %s)",
            (merchant_id, subject_type, subject_id, action, Jsonb(details or {})),
        )

    # -- merchants ----------------------------------------------------------------------
    async def insert_merchant(self, merchant_id: uuid.UUID, command: OnboardMerchant) -> Merchant:
        payout = {k: v for k, v in asdict(command.payout_account).items() if v}
        cur = await self.conn.execute(
            "INSERT INTO merchants (merchant_id, legal_name, display_name, contact_email, country_code, "
            "settlement_currency, payout_account, fee_bps) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            f"RETURNING {_MERCHANT_COLUMNS}",
            (
                merchant_id,
                command.legal_name,
                command.display_name,
                command.contact_email,
                command.country_code,
                command.settlement_currency,
                Jsonb(payout),
                command.fee_bps,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        return _merchant(row)

    async def get_merchant(self, merchant_id: uuid.UUID, *, lock: bool = False) -> Merchant | None:
        cur = await self.conn.execute(
            f"SELECT {_MERCHANT_COLUMNS} FROM merchants WHERE merchant_id = %s"
            f"{' FOR NO KEY UPDATE' if lock else ''}",
            (merchant_id,),
        )
        row = await cur.fetchone()
        return _merchant(row) if row else None

    async def set_settlement_wallet(self, merchant_id: uuid.UUID, wallet_id: uuid.UUID) -> bool:
        """Stores the wallet once; False when it was already stored (by a racing call)."""
        cur = await self.conn.execute(
            "UPDATE merchants SET settlement_wallet_id = %s, updated_at = now() "
            "WHERE merchant_id = %s AND settlement_wallet_id IS NULL",
            (wallet_id, merchant_id),
        )
        return cur.rowcount == 1

    async def set_state(self, merchant_id: uuid.UUID, state: MerchantState, suspend_reason: str) -> Merchant:
        cur = await self.conn.execute(
            "UPDATE merchants SET state = %s, suspend_reason = %s, updated_at = now() "
            f"WHERE merchant_id = %s RETURNING {_MERCHANT_COLUMNS}",
            (state.value, suspend_reason, merchant_id),
        )
        row = await cur.fetchone()
        assert row is not None
        return _merchant(row)

    async def list_merchants(
        self, state: MerchantState | None, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[Merchant]:
        cur = await self.conn.execute(
            f"SELECT {_MERCHANT_COLUMNS} FROM merchants "
            "WHERE (%(state)s::text IS NULL OR state = %(state)s) "
            "AND (%(at)s::timestamptz IS NULL OR (created_at, merchant_id) > (%(at)s, %(id)s::uuid)) "
            "ORDER BY created_at, merchant_id LIMIT %(limit)s",
            {
                "state": state.value if state else None,
                "at": after[0] if after else None,
                "id": after[1] if after else None,
                "limit": limit,
            },
        )
        return [_merchant(r) for r in await cur.fetchall()]

    async def merchants_without_wallet(self, created_before: datetime, limit: int) -> list[Merchant]:
        cur = await self.conn.execute(
            f"SELECT {_MERCHANT_COLUMNS} FROM merchants WHERE settlement_wallet_id IS NULL "
            "AND created_at < %s ORDER BY created_at LIMIT %s",
            (created_before, limit),
        )
        return [_merchant(r) for r in await cur.fetchall()]

    # -- API keys -----------------------------------------------------------------------
    async def insert_api_key(
        self,
        key_id: uuid.UUID,
        merchant_id: uuid.UUID,
        public_id: str,
        secret_hash: bytes,
        scopes: tuple[ApiKeyScope, ...],
        rate_limit_per_minute: int,
        expires_at: datetime | None,
    ) -> ApiKey:
        cur = await self.conn.execute(
            "INSERT INTO merchant_api_keys (key_id, merchant_id, public_id, secret_hash, scopes, "
            "rate_limit_per_minute, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            f"RETURNING {_KEY_COLUMNS}",
            (
                key_id,
                merchant_id,
                public_id,
                secret_hash,
                [s.value for s in scopes],
                rate_limit_per_minute,
                expires_at,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        return _api_key(row)

    async def get_api_key(
        self, merchant_id: uuid.UUID, key_id: uuid.UUID, *, lock: bool = False
    ) -> ApiKey | None:
        cur = await self.conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM merchant_api_keys WHERE merchant_id = %s AND key_id = %s"
            f"{' FOR NO KEY UPDATE' if lock else ''}",
            (merchant_id, key_id),
        )
        row = await cur.fetchone()
        return _api_key(row) if row else None

    async def api_key_for_authentication(self, public_id: str) -> tuple[ApiKey, bytes, MerchantState] | None:
        """The key, its secret's hash and its merchant's state, in one indexed read."""
        cur = await self.conn.execute(
            f"SELECT {', '.join('k.' + c.strip() for c in _KEY_COLUMNS.split(','))}, "
            "k.secret_hash, m.state AS merchant_state "
            "FROM merchant_api_keys k JOIN merchants m USING (merchant_id) WHERE k.public_id = %s",
            (public_id,),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        return _api_key(row), bytes(row["secret_hash"]), MerchantState(row["merchant_state"])

    async def list_api_keys(
        self, merchant_id: uuid.UUID, limit: int, before: tuple[datetime, uuid.UUID] | None
    ) -> list[ApiKey]:
        cur = await self.conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM merchant_api_keys WHERE merchant_id = %(m)s "
            "AND (%(at)s::timestamptz IS NULL OR (created_at, key_id) < (%(at)s, %(id)s::uuid)) "
            "ORDER BY created_at DESC, key_id DESC LIMIT %(limit)s",
            {
                "m": merchant_id,
                "at": before[0] if before else None,
                "id": before[1] if before else None,
                "limit": limit,
            },
        )
        return [_api_key(r) for r in await cur.fetchall()]

    async def revoke_api_key(self, key_id: uuid.UUID, at: datetime) -> ApiKey:
        cur = await self.conn.execute(
            f"UPDATE merchant_api_keys SET revoked_at = %s WHERE key_id = %s RETURNING {_KEY_COLUMNS}",
            (at, key_id),
        )
        row = await cur.fetchone()
        assert row is not None
        return _api_key(row)

    async def supersede_api_key(
        self,
        key_id: uuid.UUID,
        replaced_by_key_id: uuid.UUID,
        expires_at: datetime | None,
        revoked_at: datetime | None,
    ) -> ApiKey:
        cur = await self.conn.execute(
            "UPDATE merchant_api_keys SET replaced_by_key_id = %s, expires_at = %s, revoked_at = %s "
            f"WHERE key_id = %s RETURNING {_KEY_COLUMNS}",
            (replaced_by_key_id, expires_at, revoked_at, key_id),
        )
        row = await cur.fetchone()
        assert row is not None
        return _api_key(row)

    async def record_key_use(self, key_id: uuid.UUID, at: datetime, stale_before: datetime) -> None:
        """Moves last_used_at forward unless it is already recent: a busy key writes its
        row at most once per precision window, not on every call."""
        await self.conn.execute(
            "UPDATE merchant_api_keys SET last_used_at = %s "
            "WHERE key_id = %s AND (last_used_at IS NULL OR last_used_at < %s)",
            (at, key_id, stale_before),
        )

    # -- webhook endpoints --------------------------------------------------------------
    async def insert_webhook_endpoint(
        self,
        endpoint_id: uuid.UUID,
        merchant_id: uuid.UUID,
        url: str,
        event_types: tuple[str, ...],
        description: str,
        sealed_secret: bytes,
        secret_key_id: str,
    ) -> WebhookEndpoint:
        cur = await self.conn.execute(
            "INSERT INTO webhook_endpoints (endpoint_id, merchant_id, url, event_types, description, "
            "signing_secret, secret_key_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            f"RETURNING {_ENDPOINT_COLUMNS}",
            (endpoint_id, merchant_id, url, list(event_types), description, sealed_secret, secret_key_id),
        )
        row = await cur.fetchone()
        assert row is not None
        return _endpoint(row)

    async def get_webhook_endpoint(
        self, merchant_id: uuid.UUID, endpoint_id: uuid.UUID, *, lock: bool = False
    ) -> WebhookEndpoint | None:
        cur = await self.conn.execute(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE merchant_id = %s AND endpoint_id = %s"
            f"{' FOR NO KEY UPDATE' if lock else ''}",
            (merchant_id, endpoint_id),
        )
        row = await cur.fetchone()
        return _endpoint(row) if row else None

    async def list_webhook_endpoints(
        self, merchant_id: uuid.UUID, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[WebhookEndpoint]:
        cur = await self.conn.execute(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints "
            "WHERE merchant_id = %(m)s AND deleted_at IS NULL "
            "AND (%(at)s::timestamptz IS NULL OR (created_at, endpoint_id) > (%(at)s, %(id)s::uuid)) "
            "ORDER BY created_at, endpoint_id LIMIT %(limit)s",
            {
                "m": merchant_id,
                "at": after[0] if after else None,
                "id": after[1] if after else None,
                "limit": limit,
            },
        )
        return [_endpoint(r) for r in await cur.fetchall()]

    async def webhook_endpoints_with_secrets(
        self, merchant_id: uuid.UUID
    ) -> list[tuple[WebhookEndpoint, bytes, str]]:
        """A merchant's live endpoints with their sealed secrets and the sealing key's id."""
        cur = await self.conn.execute(
            f"SELECT {_ENDPOINT_COLUMNS}, signing_secret, secret_key_id FROM webhook_endpoints "
            "WHERE merchant_id = %s AND deleted_at IS NULL ORDER BY created_at, endpoint_id",
            (merchant_id,),
        )
        return [(_endpoint(r), bytes(r["signing_secret"]), r["secret_key_id"]) for r in await cur.fetchall()]

    async def delete_webhook_endpoint(self, endpoint_id: uuid.UUID, at: datetime) -> None:
        """Soft delete: the row stays for the audit trail and deliveries that name it; the
        signing secret, no longer needed by anyone, is wiped."""
        await self.conn.execute(
            "UPDATE webhook_endpoints SET deleted_at = %s, signing_secret = NULL, secret_key_id = NULL "
            "WHERE endpoint_id = %s AND deleted_at IS NULL",
            (at, endpoint_id),
        )
