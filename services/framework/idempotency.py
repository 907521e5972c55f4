"""The client's `Idempotency-Key`: the HTTP header, which Envoy passes on as gRPC metadata,
or the same metadata sent straight over gRPC. One key per call, 1 to 255 characters.

A service stores the key, scoped to its RPC, with a hash of the request in the same
transaction as the effect; a retry with the same key and request replays the first answer,
and the same key with a different request is `IdempotencyKeyReused`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from services.framework.errors import FailedPrecondition, FieldViolation, InvalidArgument

HEADER = "idempotency-key"


@dataclass(frozen=True)
class IdempotencyKey:
    """A creating call's Idempotency-Key, scoped to its RPC, with a hash of the request so
    that the same key with a different request is refused rather than replayed."""

    rpc: str
    key: str
    request_hash: bytes


class IdempotencyKeyReused(FailedPrecondition):
    default_reason = "IDEMPOTENCY_MISMATCH"

    def __init__(self, key: IdempotencyKey) -> None:
        super().__init__(
            f"Idempotency-Key {key.key!r} was already used for a different {key.rpc} request",
            metadata={"idempotency_key": key.key, "rpc": key.rpc},
        )


def header(context: Any) -> str | None:
    """The key the client sent, if any; a malformed or repeated one is INVALID_ARGUMENT."""
    values = [v for k, v in context.invocation_metadata() or () if k == HEADER]
    if not values:
        return None
    key = str(values[-1])
    if not 1 <= len(key) <= 255 or not key.isprintable() or len(set(values)) > 1:
        raise InvalidArgument(
            "invalid request: Idempotency-Key must be one value of 1 to 255 printable characters",
            field_violations=[
                FieldViolation("Idempotency-Key", "must be one value of 1 to 255 printable characters")
            ],
        )
    return key


def for_request(context: Any, rpc: str, request: Message) -> IdempotencyKey | None:
    """The call's key scoped to `rpc`, with the request's hash; None without a key."""
    key = header(context)
    if key is None:
        return None
    return IdempotencyKey(rpc, key, hashlib.sha256(request.SerializeToString(deterministic=True)).digest())
