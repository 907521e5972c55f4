"""One database transaction that may change a user, with the profile cache told of it:
the writer is announced before the transaction and the committed snapshot stored after
it (see adapters/profile_cache.py), so the cache is never stale after a commit."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from services.framework.db import Database
from services.users.adapters.profile_cache import ProfileCache
from services.users.adapters.repository import UserRepository
from services.users.domain.model import User


@dataclass
class Work:
    conn: AsyncConnection[Any]
    repo: UserRepository
    changed: bool = False  # set by the use case when it wrote to the user or profile


class UnitOfWork:
    def __init__(self, db: Database, cache: ProfileCache | None) -> None:
        self.db = db
        self.cache = cache

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UserRepository]:
        async with self.db.transaction() as conn:
            yield UserRepository(conn)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[UserRepository]:
        """Reads as of one instant (services/framework/db.py)."""
        async with self.db.snapshot() as conn:
            yield UserRepository(conn)

    @asynccontextmanager
    async def changing(self, user_id: uuid.UUID) -> AsyncIterator[Work]:
        announced = self.cache is not None and await self.cache.begin_write(user_id)
        committed: User | None = None
        try:
            async with self.db.transaction() as conn:
                work = Work(conn, UserRepository(conn))
                yield work
                if work.changed:
                    committed = await work.repo.get(user_id)
        except BaseException:
            committed = None
            raise
        finally:
            if announced and self.cache is not None:
                await self.cache.end_write(user_id, committed)
