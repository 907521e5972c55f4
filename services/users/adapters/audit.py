"""The audit log (table `audit_log`): one row per state change, written on the
transaction's own connection, so the change and its record commit or vanish together.

Nothing here knows about users: a resource type and id, the person whose data the row
holds (`subject_id`), JSON before/after images, so the framework can adopt it as is.
Secrets never reach it: callers pass domain objects' audit views, which hold none.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from services.framework.logs import current_trace_id


@dataclass(frozen=True)
class Caller:
    """Who is calling and from where, as far as the service can tell."""

    actor: str  # 'user:<id>' when a valid access token names the user, else 'anonymous'
    source_ip: str  # '' when unknown
    user_agent: str = ""

    def as_user(self, user_id: object) -> Caller:
        """The caller proved to be this user (with a password or a refresh token)."""
        return Caller(f"user:{user_id}", self.source_ip, self.user_agent)


def valid_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


async def record(
    conn: AsyncConnection[Any],
    caller: Caller,
    action: str,
    resource_type: str,
    resource_id: object,
    *,
    subject_id: object | None = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, resource_type, resource_id, subject_id, source_ip, "
        "trace_id, before, after, details) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            caller.actor,
            action,
            resource_type,
            str(resource_id),
            str(subject_id) if subject_id is not None else None,
            valid_ip(caller.source_ip) if caller.source_ip else None,
            current_trace_id(),
            Jsonb(dict(before)) if before is not None else None,
            Jsonb(dict(after)) if after is not None else None,
            Jsonb(dict(details or {})),
        ),
    )


async def redact_subject(conn: AsyncConnection[Any], subject_id: object, personal_keys: Sequence[str]) -> int:
    """Erasure: removes the subject's personal data from their audit rows (the named keys
    of before/after, and the source address of what they did themselves). Who did what,
    and when, stays. Returns how many rows were redacted."""
    keys = list(personal_keys)
    cur = await conn.execute(
        "UPDATE audit_log SET before = before - %(keys)s::text[], after = after - %(keys)s::text[], "
        "source_ip = CASE WHEN actor = %(actor)s THEN NULL ELSE source_ip END, redacted_at = now() "
        "WHERE subject_id = %(subject)s",
        {"keys": keys, "actor": f"user:{subject_id}", "subject": str(subject_id)},
    )
    return cur.rowcount
