"""Data keys: their versions, their lifecycle and the rule a rotation obeys.

A data key (DEK) version is ACTIVE (encrypts new cards; exactly one is), then
DECRYPT_ONLY once a newer version replaces it (still decrypts the cards it encrypted
until they are re-encrypted), then RETIRED once no card needs it and its retention has
passed: its wrapped material is erased, so nothing it ever encrypted (including copies
in old backups or dead row versions) can be read again. RETIRED is the vault's own
state; the contract reports only versions whose material is still stored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from services.framework.errors import FailedPrecondition


class KeyState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    DECRYPT_ONLY = "DECRYPT_ONLY"
    RETIRED = "RETIRED"


@dataclass(frozen=True)
class DataKey:
    """A data key version as an operator sees it: never its material."""

    version: int
    state: KeyState
    card_count: int
    created_at: datetime
    deactivated_at: datetime | None


class RotationConflict(FailedPrecondition):
    default_reason = "INVALID_STATE"


def check_rotation(active_version: int, expected_active_version: int) -> None:
    """A rotation names the version it replaces (or 0 for whichever is active), so a
    retried rotation never rotates twice."""
    if expected_active_version and expected_active_version != active_version:
        raise RotationConflict(
            f"data key version {active_version} is active, not {expected_active_version}; "
            "nothing was rotated",
            metadata={
                "active_version": str(active_version),
                "expected_active_version": str(expected_active_version),
            },
        )
