"""API keys: issued with a secret shown once, listed without it, rotated with an
overlap, revoked at once, and checked on every call a merchant makes (AuthenticateApiKey).

Authentication reads the key from PostgreSQL on every call rather than from a cache, so a
revocation or expiry takes effect on the very next call; the read is one index lookup.
The per-key rate limit is counted only after the secret matched, so nobody can use up a
merchant's quota by sending its (public) key id with wrong secrets.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from prometheus_client import Counter

from services.framework import paging
from services.framework.db import Database
from services.framework.errors import ServiceError
from services.merchants.adapters.rate_limiter import RateLimiter
from services.merchants.adapters.repository import MerchantRepository
from services.merchants.domain.credentials import hash_secret, new_public_id, new_secret, secret_matches
from services.merchants.domain.model import (
    ApiKey,
    ApiKeyNotFound,
    ApiKeyScope,
    IdempotencyKey,
    InvalidCredentials,
    MerchantNotFound,
    RateLimited,
    check_key_usable,
    plan_rotation,
)
from services.merchants.service_layer import pages
from services.merchants.service_layer.onboarding import Clock, utc_now

AUTHENTICATIONS = Counter(
    "interpay_api_key_authentications_total",
    "API key authentications, by outcome (OK or the refusal's reason)",
    ["outcome"],
)

# last_used_at is exact to this: a key used all the time writes its row once a minute.
LAST_USED_PRECISION = timedelta(minutes=1)


class ApiKeys:
    def __init__(
        self, db: Database, limiter: RateLimiter, default_rate_limit_per_minute: int, clock: Clock = utc_now
    ) -> None:
        self.db = db
        self.limiter = limiter
        self.default_rate_limit_per_minute = default_rate_limit_per_minute
        self.clock = clock

    async def create(
        self,
        merchant_id: uuid.UUID,
        scopes: tuple[ApiKeyScope, ...],
        expires_at: datetime | None,
        rate_limit_per_minute: int,
        idempotency: IdempotencyKey | None,
    ) -> tuple[ApiKey, str]:
        """The new key and its secret; a replay returns the first key and no secret ("")."""
        key_id, secret = uuid.uuid4(), new_secret()
        async with self.db.transaction() as conn:
            repo = MerchantRepository(conn)
            first = await repo.claim_idempotency_key(idempotency, key_id) if idempotency else None
            if first is not None:
                return await self._replayed(repo, merchant_id, first), ""
            if await repo.get_merchant(merchant_id) is None:
                raise MerchantNotFound(merchant_id)
            key = await repo.insert_api_key(
                key_id,
                merchant_id,
                new_public_id(),
                hash_secret(secret),
                scopes,
                rate_limit_per_minute or self.default_rate_limit_per_minute,
                expires_at,
            )
            await repo.audit(merchant_id, "API_KEY", key_id, "CREATED", _described(key))
        return key, secret

    async def list(self, merchant_id: uuid.UUID, page_size: int, page_token: str) -> tuple[list[ApiKey], str]:
        scope = f"apiKeys/{merchant_id}"
        before = pages.decode(page_token, scope)
        size = paging.page_size(page_size)
        async with self.db.transaction() as conn:
            repo = MerchantRepository(conn)
            if await repo.get_merchant(merchant_id) is None:
                raise MerchantNotFound(merchant_id)
            rows = await repo.list_api_keys(merchant_id, size + 1, before)
        return pages.page(rows, size, scope, lambda k: (k.created_at, k.key_id))

    async def rotate(
        self,
        merchant_id: uuid.UUID,
        key_id: uuid.UUID,
        overlap: timedelta,
        idempotency: IdempotencyKey | None,
    ) -> tuple[ApiKey, str, ApiKey]:
        """(the new key, its secret, the old key). The old key is revoked at once when there
        is no overlap, else it expires when the overlap ends. A replay returns both keys
        as they are now, and no secret."""
        new_key_id, secret, now = uuid.uuid4(), new_secret(), self.clock()
        async with self.db.transaction() as conn:
            repo = MerchantRepository(conn)
            first = await repo.claim_idempotency_key(idempotency, new_key_id) if idempotency else None
            if first is not None:
                new = await self._replayed(repo, merchant_id, first)
                return new, "", await self._existing(repo, merchant_id, key_id)
            old = await self._existing(repo, merchant_id, key_id, lock=True)
            plan = plan_rotation(old, overlap, now)
            new = await repo.insert_api_key(
                new_key_id,
                merchant_id,
                new_public_id(),
                hash_secret(secret),
                old.scopes,
                old.rate_limit_per_minute,
                plan.new_expires_at,
            )
            old = await repo.supersede_api_key(
                old.key_id, new_key_id, plan.old_expires_at, now if plan.revoke_old_now else None
            )
            await repo.audit(
                merchant_id,
                "API_KEY",
                old.key_id,
                "ROTATED",
                {
                    "replaced_by_key_id": str(new_key_id),
                    "overlap_seconds": overlap.total_seconds(),
                    "expire_time": old.expires_at.isoformat() if old.expires_at else None,
                    "revoked": plan.revoke_old_now,
                },
            )
            await repo.audit(
                merchant_id,
                "API_KEY",
                new_key_id,
                "CREATED",
                {**_described(new), "rotated_from": str(key_id)},
            )
        return new, secret, old

    async def revoke(self, merchant_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
        async with self.db.transaction() as conn:
            repo = MerchantRepository(conn)
            key = await self._existing(repo, merchant_id, key_id, lock=True)
            if key.revoked_at is not None:
                return key  # already revoked: retry-safe
            key = await repo.revoke_api_key(key_id, self.clock())
            await repo.audit(merchant_id, "API_KEY", key_id, "REVOKED", {"public_id": key.public_id})
        return key

    async def authenticate(self, public_id: str, secret: str) -> ApiKey:
        try:
            key = await self._authenticate(public_id, secret)
        except ServiceError as refusal:
            AUTHENTICATIONS.labels(refusal.reason).inc()
            raise
        AUTHENTICATIONS.labels("OK").inc()
        return key

    async def _authenticate(self, public_id: str, secret: str) -> ApiKey:
        async with self.db.transaction() as conn:
            found = await MerchantRepository(conn).api_key_for_authentication(public_id)
        if not secret_matches(secret, found[1] if found else None) or found is None:
            raise InvalidCredentials()
        key, _, merchant_state = found
        now = self.clock()
        check_key_usable(key, merchant_state, now)
        retry_after = await self.limiter.acquire(key.key_id, key.rate_limit_per_minute)
        if retry_after is not None:
            raise RateLimited(key, retry_after)
        if key.last_used_at is None or key.last_used_at < now - LAST_USED_PRECISION:
            async with self.db.transaction() as conn:
                await MerchantRepository(conn).record_key_use(key.key_id, now, now - LAST_USED_PRECISION)
        return key

    @staticmethod
    async def _existing(
        repo: MerchantRepository, merchant_id: uuid.UUID, key_id: uuid.UUID, *, lock: bool = False
    ) -> ApiKey:
        key = await repo.get_api_key(merchant_id, key_id, lock=lock)
        if key is not None:
            return key
        if await repo.get_merchant(merchant_id) is None:
            raise MerchantNotFound(merchant_id)
        raise ApiKeyNotFound(merchant_id, key_id)

    @staticmethod
    async def _replayed(repo: MerchantRepository, merchant_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
        key = await repo.get_api_key(merchant_id, key_id)
        assert key is not None  # the request (and so the merchant) matched the first one
        return key


def _described(key: ApiKey) -> dict[str, object]:
    return {
        "public_id": key.public_id,
        "scopes": [s.value for s in key.scopes],
        "rate_limit_per_minute": key.rate_limit_per_minute,
        "expire_time": key.expires_at.isoformat() if key.expires_at else None,
    }
