"""Keyset page tokens for the merchants' listings: (scope, created_at, id), so a token is
refused by any listing other than the one that issued it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from services.framework import paging
from services.framework.errors import FieldViolation, InvalidArgument

T = TypeVar("T")


def decode(token: str, scope: str) -> tuple[datetime, uuid.UUID] | None:
    cursor = paging.decode(token)
    if cursor is None:
        return None
    try:
        if len(cursor) != 3 or cursor[0] != scope:
            raise ValueError("another listing's token")
        at = datetime.fromisoformat(cursor[1])
        if at.tzinfo is None:
            raise ValueError("naive time")
        return at, uuid.UUID(cursor[2])
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            "page_token belongs to another listing",
            field_violations=[FieldViolation("page_token", "not a token of this listing")],
        ) from exc


def page(
    rows: Sequence[T], size: int, scope: str, key: Callable[[T], tuple[datetime, uuid.UUID]]
) -> tuple[list[T], str]:
    """The first `size` rows (the query fetched one more to learn whether a next page
    exists) and the token of the next page, or "" if there is none."""
    if len(rows) <= size:
        return list(rows), ""
    kept = list(rows[:size])
    at, last_id = key(kept[-1])
    return kept, paging.encode([scope, at.isoformat(), str(last_id)])
