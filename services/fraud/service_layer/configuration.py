"""The configuration every replica holds in memory: enabled rules, the blacklist and the
thresholds, at one configuration version.

Every change (see admin.py) increments `fraud_config.version` in its own transaction and
stamps the rows it writes with the new version, so a replica at version V catches up by
reading only the rows with `change_version > V`. A replica catches up:
- before every check whose one round trip to Postgres (the idempotency lookup) shows a
  newer version, so a rule change applies to every check that starts after the change
  committed, on every replica;
- every second in the background, so an idle replica does not fall behind;
- right after its own admin writes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection

from services.framework.db import Database
from services.fraud.adapters.repository import FraudRepository
from services.fraud.domain.blacklist import BlacklistIndex
from services.fraud.domain.model import FraudRule, RuleState, Thresholds


@dataclass
class Snapshot:
    version: int = 0
    rules: dict[object, FraudRule] = field(default_factory=dict)
    enabled: tuple[FraudRule, ...] = ()
    blacklist: BlacklistIndex = field(default_factory=BlacklistIndex)
    thresholds: Thresholds | None = None


class Configuration:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.current = Snapshot()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self.refresh()

    async def close(self) -> None:
        return None

    async def ensure(self, version: int, conn: AsyncConnection[Any]) -> Snapshot:
        """The snapshot at `version` or later, caught up on the caller's connection (a check
        holding one connection must not wait for a second one from the pool)."""
        if self.current.version < version:
            await self._refresh(FraudRepository(conn))
        return self.current

    async def refresh(self) -> None:
        async with self.db.transaction() as conn:
            await self._refresh(FraudRepository(conn))

    async def _refresh(self, repo: FraudRepository) -> None:
        async with self._lock:
            seen = self.current.version
            # Rows stamped after `latest` may be read too; they are applied again next time
            # (applying a row is idempotent, and the version only grows).
            latest = await repo.config_version()
            if latest <= seen:
                return
            rules = await repo.rules_changed_since(seen)
            entries = await repo.blacklist_changed_since(seen)
            thresholds = await repo.thresholds_changed_since(seen)
            # No await from here on: checks never see a half-applied snapshot.
            snapshot = self.current
            for rule in rules:
                snapshot.rules[rule.rule_id] = rule
            for entry in entries:
                snapshot.blacklist.apply(entry)
            if thresholds is not None:
                snapshot.thresholds = thresholds
            snapshot.enabled = tuple(
                sorted(
                    (r for r in snapshot.rules.values() if r.state is RuleState.ENABLED),
                    key=lambda r: (r.created_at, str(r.rule_id)),
                )
            )
            snapshot.version = latest
