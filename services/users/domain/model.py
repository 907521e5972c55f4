"""The identity domain: users, their profiles, and the refusals of registration and login."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from services.framework.errors import AlreadyExists, FieldViolation, NotFound, Unauthenticated


@dataclass(frozen=True)
class User:
    user_id: uuid.UUID
    email: str
    phone: str
    state: str
    kyc_level: int
    display_name: str
    country_code: str
    preferred_language: str
    profile_version: int
    created_at: datetime
    updated_at: datetime


class UserNotFound(NotFound):
    default_reason = "USER_NOT_FOUND"

    def __init__(self, user_id: uuid.UUID | str) -> None:
        super().__init__(f"user {user_id} does not exist", metadata={"user_id": str(user_id)})


class IdentifierTaken(AlreadyExists):
    def __init__(self, field: str) -> None:
        super().__init__(
            f"a user with this {field} is already registered",
            reason=f"{field.upper()}_TAKEN",
            field_violations=[FieldViolation(field, "already registered")],
        )


class InvalidCredentials(Unauthenticated):
    default_reason = "INVALID_CREDENTIALS"

    def __init__(self) -> None:
        # One message for an unknown email and a wrong password: the answer must not
        # tell an attacker which emails are registered.
        super().__init__("the email or password is not correct")
