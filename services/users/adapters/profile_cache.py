"""Users with their profiles cached in Redis (cache-aside, 60 s TTL), never stale after a
commit: the framework's versioned cache (services/framework/versioned_cache.py) keyed by
user, with `users.version`, bumped by every change of the user or profile. An erased
user's personal data is replaced by the erased snapshot at commit."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import redis.asyncio as redis

from services.framework.versioned_cache import Codec, VersionedCache
from services.users.domain.model import User

TTL_SECONDS = 60


def cache_key(user_id: uuid.UUID) -> str:
    return f"users:user:{user_id}"


def encode(u: User) -> str:
    return json.dumps(
        [
            str(u.user_id),
            u.email,
            u.phone,
            u.state,
            u.kyc_level,
            u.display_name,
            u.country_code,
            u.preferred_language,
            u.profile_version,
            u.created_at.isoformat(),
            u.updated_at.isoformat(),
            u.version,
        ]
    )


def decode(raw: bytes) -> User:
    f = json.loads(raw)
    return User(
        uuid.UUID(f[0]),
        f[1],
        f[2],
        f[3],
        f[4],
        f[5],
        f[6],
        f[7],
        f[8],
        datetime.fromisoformat(f[9]),
        datetime.fromisoformat(f[10]),
        f[11],
    )


class ProfileCache(VersionedCache[uuid.UUID, User]):
    """One user per key; the users service announces one user at a time."""

    def __init__(self, client: redis.Redis) -> None:
        codec = Codec(cache_key, lambda u: u.user_id, lambda u: u.version, encode, decode)
        super().__init__(client, codec, TTL_SECONDS, "profile")

    async def begin_write(self, user_id: uuid.UUID) -> bool:  # type: ignore[override]
        return await super().begin_write([user_id])

    async def end_write(self, user_id: uuid.UUID, committed: User | None) -> None:  # type: ignore[override]
        await super().end_write([user_id], [committed] if committed is not None else [])
