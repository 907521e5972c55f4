"""Opaque page tokens (AIP-158): a keyset cursor, base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from services.framework.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 20


def page_size(requested: int) -> int:
    return requested or DEFAULT_PAGE_SIZE


def encode(cursor: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode().rstrip("=")


def decode(token: str) -> list[Any] | None:
    if not token:
        return None
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(
            "page_token is not a token this API issued",
            field_violations=[FieldViolation("page_token", "malformed")],
        ) from exc
    if not isinstance(cursor, list):
        raise InvalidArgument(
            "page_token is not a token this API issued",
            field_violations=[FieldViolation("page_token", "malformed")],
        )
    return cursor
