"""The UserService servicer: proto in -> use case -> proto out."""

from __future__ import annotations

import uuid
from typing import Any

from interpay.users.v1 import users_service_pb2 as pb

from services.framework.proto import timestamp
from services.users.adapters.tokens import TokenIssuer
from services.users.domain.model import User
from services.users.service_layer.identity import Identity


def user_pb(u: User) -> pb.User:
    return pb.User(
        user_id=str(u.user_id),
        email=u.email,
        phone=u.phone,
        state=pb.User.State.Value(f"STATE_{u.state}"),
        profile=pb.UserProfile(
            display_name=u.display_name,
            country_code=u.country_code,
            preferred_language=u.preferred_language,
            version=u.profile_version,
        ),
        kyc_level=u.kyc_level,
        create_time=timestamp(u.created_at),
        update_time=timestamp(u.updated_at),
    )


class UserServicer:
    def __init__(self, identity: Identity, tokens: TokenIssuer) -> None:
        self.identity = identity
        self.tokens = tokens

    async def RegisterUser(self, request: pb.RegisterUserRequest, context: Any) -> pb.RegisterUserResponse:
        user = await self.identity.register(
            request.email, request.phone, request.password, request.display_name, request.country_code
        )
        return pb.RegisterUserResponse(user=user_pb(user))

    async def Login(self, request: pb.LoginRequest, context: Any) -> pb.LoginResponse:
        session = await self.identity.login(request.email, request.password)
        return pb.LoginResponse(
            access_token=session.access_token,
            token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
            expires_in_seconds=session.expires_in_seconds,
            refresh_token=session.refresh_token,
            user_id=str(session.user_id),
        )

    async def GetUser(self, request: pb.GetUserRequest, context: Any) -> pb.GetUserResponse:
        user = await self.identity.get_user(uuid.UUID(request.user_id))
        return pb.GetUserResponse(user=user_pb(user))

    async def GetJwks(self, request: pb.GetJwksRequest, context: Any) -> pb.GetJwksResponse:
        jwk = self.tokens.jwk
        return pb.GetJwksResponse(
            keys=[pb.Jwk(**{k: jwk[k] for k in ("kty", "kid", "use", "alg", "crv", "x", "y")})]
        )
