"""PostgreSQL for a service: its own database, reached through its own role.

`Database` is a server resource: on start it applies the service's migrations (plain SQL
files in `services/<name>/migrations`, applied by yoyo under its lock table, so several
replicas starting at once migrate once) and opens a psycopg 3 connection pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from yoyo import get_backend, read_migrations

from services.framework import audit, metrics

log = logging.getLogger("interpay.db")


def migrate(database_url: str, migrations_dir: Path) -> int:
    """Applies pending migrations; returns how many were applied."""
    backend = get_backend(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrations = read_migrations(str(migrations_dir))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return len(pending)


class Database:
    """`audited`: the database keeps the framework's audit trail (services/framework/
    audit.py), so every transaction made while serving a call tells it who is calling."""

    def __init__(
        self, url: str, migrations_dir: Path | None, max_size: int = 10, *, audited: bool = False
    ) -> None:
        self.url = url
        self.migrations_dir = migrations_dir
        self.audited = audited
        self.pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"row_factory": dict_row, "autocommit": False},
            # Test on borrow (an empty query): a connection that died while idle in the pool
            # (PostgreSQL restarted, a network cut) is replaced before anyone uses it, so a
            # restart costs requests nothing but the wait for the server.
            check=AsyncConnectionPool.check_connection,
        )

    def pool_gauges(self) -> list[tuple[list[str], float]]:
        stats = self.pool.get_stats()
        return [
            ([key], float(stats.get(key, 0))) for key in ("pool_size", "pool_available", "requests_waiting")
        ]

    async def start(self) -> None:
        metrics.register_gauge(
            "interpay_db_pool", "Connection pool state, by statistic", ["stat"], self.pool_gauges
        )
        if self.migrations_dir is not None:
            applied = await asyncio.to_thread(migrate, self.url, self.migrations_dir)
            log.info("migrations applied", extra={"count": applied})
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection inside one transaction: committed on success, rolled back on error."""
        async with self.pool.connection() as conn:
            if self.audited and (settings := audit.call_settings()) is not None:
                async with conn.pipeline():  # sent with the BEGIN: no round trip of its own
                    await conn.execute(audit.SETTINGS_SQL, settings)
            yield conn  # the pool commits on clean exit and rolls back on an exception

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection whose every statement commits by itself: for work that needs no
        shared snapshot, where BEGIN and COMMIT would only add two round trips (the fraud
        check). Given back to the pool transactional, as the pool lends connections, or
        closed (and replaced by the pool) when it cannot be (cancelled mid-statement)."""
        async with self.pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                yield conn
            finally:
                if conn.pgconn.transaction_status == TransactionStatus.IDLE:
                    await conn.set_autocommit(False)
                else:
                    await conn.close()

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A read-only REPEATABLE READ transaction: every query sees the same instant
        (an export, a reconciliation). It changes nothing, so it has nothing to audit."""
        async with self.pool.connection() as conn:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn
