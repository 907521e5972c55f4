"""The UserService servicer: proto in -> use case -> proto out. Nothing else lives here."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from interpay.common.v1.money_pb2 import Money
from interpay.users.v1 import users_service_pb2 as pb

from services.framework.proto import timestamp
from services.users.adapters.tokens import TokenIssuer
from services.users.domain.model import (
    PROFILE_FIELDS,
    DocumentState,
    DocumentType,
    KycDocument,
    Limits,
    SessionRecord,
    User,
)
from services.users.entrypoints.callers import identify
from services.users.service_layer.accounts import Accounts
from services.users.service_layer.identity import Identity, Session
from services.users.service_layer.kyc import Kyc

_DECISIONS = {
    pb.KYC_DECISION_VERIFIED: DocumentState.VERIFIED,
    pb.KYC_DECISION_REJECTED: DocumentState.REJECTED,
}


def profile_pb(u: User) -> pb.UserProfile:
    return pb.UserProfile(
        display_name=u.display_name,
        country_code=u.country_code,
        preferred_language=u.preferred_language,
        version=u.profile_version,
    )


def user_pb(u: User) -> pb.User:
    return pb.User(
        user_id=str(u.user_id),
        email=u.email,
        phone=u.phone,
        state=pb.User.State.Value(f"STATE_{u.state}"),
        profile=profile_pb(u),
        kyc_level=u.kyc_level,
        create_time=timestamp(u.created_at),
        update_time=timestamp(u.updated_at),
    )


def document_pb(d: KycDocument) -> pb.KycDocument:
    document = pb.KycDocument(
        document_id=str(d.document_id),
        user_id=str(d.user_id),
        document_type=pb.KycDocument.DocumentType.Value(f"DOCUMENT_TYPE_{d.document_type.value}"),
        document_reference=d.document_reference,
        issuing_country=d.issuing_country,
        state=pb.KycDocument.State.Value(f"STATE_{d.state.value}"),
        rejection_reason=d.rejection_reason,
        create_time=timestamp(d.created_at),
    )
    if d.reviewed_at is not None:
        document.review_time.CopyFrom(timestamp(d.reviewed_at))
    return document


def session_pb(s: SessionRecord, now: datetime) -> pb.SessionSummary:
    summary = pb.SessionSummary(
        session_id=str(s.session_id),
        state=pb.SessionSummary.State.Value(f"STATE_{s.state(now).value}"),
        ip_address=s.ip_address,
        user_agent=s.user_agent,
        create_time=timestamp(s.created_at),
        expire_time=timestamp(s.expires_at),
    )
    if s.last_refresh_at is not None:
        summary.last_refresh_time.CopyFrom(timestamp(s.last_refresh_at))
    return summary


def limits_pb(limit: Limits) -> pb.KycLimits:
    return pb.KycLimits(
        per_transaction=Money(amount_minor=limit.per_transaction, currency=limit.currency),
        daily=Money(amount_minor=limit.daily, currency=limit.currency),
        monthly=Money(amount_minor=limit.monthly, currency=limit.currency),
    )


def _tokens(session: Session) -> dict[str, Any]:
    return {
        "access_token": session.access_token,
        "token_type": "Bearer",
        "expires_in_seconds": session.expires_in_seconds,
        "refresh_token": session.refresh_token,
        "user_id": str(session.user_id),
    }


class UserServicer:
    def __init__(self, identity: Identity, accounts: Accounts, kyc: Kyc, tokens: TokenIssuer) -> None:
        self.identity = identity
        self.accounts = accounts
        self.kyc = kyc
        self.tokens = tokens

    async def RegisterUser(self, request: pb.RegisterUserRequest, context: Any) -> pb.RegisterUserResponse:
        user = await self.identity.register(
            request.email,
            request.phone,
            request.password,
            request.display_name,
            request.country_code,
            identify(context, self.tokens),
        )
        return pb.RegisterUserResponse(user=user_pb(user))

    async def Login(self, request: pb.LoginRequest, context: Any) -> pb.LoginResponse:
        session = await self.identity.login(request.email, request.password, identify(context, self.tokens))
        return pb.LoginResponse(**_tokens(session))

    async def RefreshSession(
        self, request: pb.RefreshSessionRequest, context: Any
    ) -> pb.RefreshSessionResponse:
        session = await self.identity.refresh(request.refresh_token, identify(context, self.tokens))
        return pb.RefreshSessionResponse(**_tokens(session))

    async def Logout(self, request: pb.LogoutRequest, context: Any) -> pb.LogoutResponse:
        await self.identity.logout(request.refresh_token, identify(context, self.tokens))
        return pb.LogoutResponse()

    async def RevokeAllSessions(
        self, request: pb.RevokeAllSessionsRequest, context: Any
    ) -> pb.RevokeAllSessionsResponse:
        count = await self.identity.revoke_all_sessions(
            uuid.UUID(request.user_id), identify(context, self.tokens)
        )
        return pb.RevokeAllSessionsResponse(revoked_session_count=count)

    async def GetJwks(self, request: pb.GetJwksRequest, context: Any) -> pb.GetJwksResponse:
        return pb.GetJwksResponse(
            keys=[
                pb.Jwk(**{k: jwk[k] for k in ("kty", "kid", "use", "alg", "crv", "x", "y")})
                for jwk in self.tokens.jwks
            ]
        )

    async def GetUser(self, request: pb.GetUserRequest, context: Any) -> pb.GetUserResponse:
        user = await self.accounts.get_user(uuid.UUID(request.user_id))
        return pb.GetUserResponse(user=user_pb(user))

    async def UpdateUserProfile(
        self, request: pb.UpdateUserProfileRequest, context: Any
    ) -> pb.UpdateUserProfileResponse:
        user = await self.accounts.update_profile(
            uuid.UUID(request.user_id),
            {name: getattr(request.profile, name) for name in PROFILE_FIELDS},
            list(request.update_mask.paths),
            request.expected_version,
            identify(context, self.tokens),
        )
        return pb.UpdateUserProfileResponse(user=user_pb(user))

    async def DeleteUser(self, request: pb.DeleteUserRequest, context: Any) -> pb.DeleteUserResponse:
        user = await self.accounts.delete_user(uuid.UUID(request.user_id), identify(context, self.tokens))
        return pb.DeleteUserResponse(user=user_pb(user))

    async def ExportUserData(
        self, request: pb.ExportUserDataRequest, context: Any
    ) -> pb.ExportUserDataResponse:
        export = await self.accounts.export_user_data(uuid.UUID(request.user_id))
        now = datetime.now(UTC)
        return pb.ExportUserDataResponse(
            data_export=pb.UserDataExport(
                user=user_pb(export.user),
                profile=profile_pb(export.user),
                kyc_documents=[document_pb(d) for d in export.documents],
                sessions=[session_pb(s, now) for s in export.sessions],
                export_time=timestamp(export.exported_at),
            )
        )

    async def EraseUser(self, request: pb.EraseUserRequest, context: Any) -> pb.EraseUserResponse:
        user = await self.accounts.erase_user(
            uuid.UUID(request.user_id), request.reason, identify(context, self.tokens)
        )
        return pb.EraseUserResponse(user=user_pb(user))

    async def SubmitKycDocument(
        self, request: pb.SubmitKycDocumentRequest, context: Any
    ) -> pb.SubmitKycDocumentResponse:
        d = request.document
        document = await self.kyc.submit(
            uuid.UUID(request.user_id),
            DocumentType(pb.KycDocument.DocumentType.Name(d.document_type).removeprefix("DOCUMENT_TYPE_")),
            d.document_reference,
            d.issuing_country,
            identify(context, self.tokens),
        )
        return pb.SubmitKycDocumentResponse(document=document_pb(document))

    async def ReviewKycDocument(
        self, request: pb.ReviewKycDocumentRequest, context: Any
    ) -> pb.ReviewKycDocumentResponse:
        document, level = await self.kyc.review(
            uuid.UUID(request.user_id),
            uuid.UUID(request.document_id),
            _DECISIONS[request.decision],
            request.rejection_reason,
            identify(context, self.tokens),
        )
        return pb.ReviewKycDocumentResponse(document=document_pb(document), kyc_level=level)

    async def ListKycDocuments(
        self, request: pb.ListKycDocumentsRequest, context: Any
    ) -> pb.ListKycDocumentsResponse:
        documents, next_token = await self.kyc.list_documents(
            uuid.UUID(request.user_id), request.page_size, request.page_token
        )
        return pb.ListKycDocumentsResponse(
            documents=[document_pb(d) for d in documents], next_page_token=next_token
        )

    async def GetKycStatus(self, request: pb.GetKycStatusRequest, context: Any) -> pb.GetKycStatusResponse:
        status = await self.kyc.status(uuid.UUID(request.user_id))
        return pb.GetKycStatusResponse(
            kyc_status=pb.KycStatus(
                user_id=str(status.user_id),
                kyc_level=status.kyc_level,
                limits=[limits_pb(limit) for limit in status.limits],
                review_pending=status.review_pending,
            )
        )

    async def GetUserRiskProfile(
        self, request: pb.GetUserRiskProfileRequest, context: Any
    ) -> pb.GetUserRiskProfileResponse:
        risk = await self.accounts.risk_profile(uuid.UUID(request.user_id))
        u = risk.user
        return pb.GetUserRiskProfileResponse(
            risk_profile=pb.UserRiskProfile(
                user_id=str(u.user_id),
                state=pb.User.State.Value(f"STATE_{u.state}"),
                kyc_level=u.kyc_level,
                country_code=u.country_code,
                create_time=timestamp(u.created_at),
                account_age_days=risk.account_age_days,
                email_domain=u.email_domain,
            )
        )
