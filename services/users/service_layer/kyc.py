"""KYC: documents submitted (references to media, never the media), reviewed once, and
the level they add up to, which gates the user's limits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from services.framework import paging
from services.framework.errors import FieldViolation, InvalidArgument
from services.users.adapters import audit
from services.users.adapters.audit import Caller
from services.users.domain.model import (
    DocumentAlreadyReviewed,
    DocumentState,
    DocumentType,
    KycDocument,
    KycDocumentNotFound,
    Limits,
    UserNotFound,
    check_can_change,
    kyc_level,
    limits_for,
)
from services.users.service_layer.accounts import Accounts
from services.users.service_layer.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class KycStatus:
    user_id: uuid.UUID
    kyc_level: int
    limits: list[Limits]
    review_pending: bool


def _bad_token() -> InvalidArgument:
    return InvalidArgument(
        "page_token belongs to another listing",
        field_violations=[FieldViolation("page_token", "not for this user's documents")],
    )


class Kyc:
    def __init__(self, uow: UnitOfWork, accounts: Accounts) -> None:
        self.uow = uow
        self.accounts = accounts

    async def submit(
        self,
        user_id: uuid.UUID,
        document_type: DocumentType,
        document_reference: str,
        issuing_country: str,
        caller: Caller,
    ) -> KycDocument:
        async with self.uow.transaction() as repo:
            user = await repo.get(user_id, lock=True)  # serialises with erasure and deletion
            if user is None:
                raise UserNotFound(user_id)
            check_can_change(user)
            document = await repo.add_document(
                uuid.uuid4(), user_id, document_type, document_reference, issuing_country
            )
            await audit.record(
                repo.conn,
                caller,
                "kyc_document.submitted",
                "kyc_document",
                document.document_id,
                subject_id=user_id,
                after=document.audit_view(),
            )
        return document

    async def review(
        self,
        user_id: uuid.UUID,
        document_id: uuid.UUID,
        decision: DocumentState,
        rejection_reason: str,
        caller: Caller,
    ) -> tuple[KycDocument, int]:
        async with self.uow.changing(user_id) as work:
            user = await work.repo.get(user_id, lock=True)
            if user is None:
                raise UserNotFound(user_id)
            check_can_change(user)
            document = await work.repo.get_document(user_id, document_id, lock=True)
            if document is None:
                raise KycDocumentNotFound(user_id, document_id)
            if document.state is not DocumentState.PENDING:
                if document.state is decision and document.rejection_reason == rejection_reason:
                    return document, user.kyc_level  # the same review again: retry-safe
                raise DocumentAlreadyReviewed(document)
            reviewed = await work.repo.review_document(document_id, decision, rejection_reason, caller.actor)
            await audit.record(
                work.conn,
                caller,
                "kyc_document.reviewed",
                "kyc_document",
                document_id,
                subject_id=user_id,
                before=document.audit_view(),
                after=reviewed.audit_view(),
            )
            level = kyc_level(await work.repo.verified_document_types(user_id))
            if level != user.kyc_level:
                await work.repo.set_kyc_level(user_id, level)
                await audit.record(
                    work.conn,
                    caller,
                    "user.kyc_level_changed",
                    "user",
                    user_id,
                    subject_id=user_id,
                    before={"kyc_level": user.kyc_level},
                    after={"kyc_level": level},
                    details={"document_id": str(document_id)},
                )
                work.changed = True
        return reviewed, level

    async def list_documents(
        self, user_id: uuid.UUID, page_size: int, page_token: str
    ) -> tuple[list[KycDocument], str]:
        cursor = paging.decode(page_token)
        before = None
        if cursor is not None:
            if len(cursor) != 3 or cursor[0] != str(user_id):
                raise _bad_token()
            try:
                before = (datetime.fromisoformat(cursor[1]), uuid.UUID(cursor[2]))
            except (TypeError, ValueError) as exc:
                raise _bad_token() from exc
        size = paging.page_size(page_size)
        async with self.uow.transaction() as repo:
            if await repo.get(user_id) is None:
                raise UserNotFound(user_id)
            documents = await repo.list_documents(user_id, size + 1, before)
        next_token = ""
        if len(documents) > size:
            documents = documents[:size]
            last = documents[-1]
            next_token = paging.encode([str(user_id), last.created_at.isoformat(), str(last.document_id)])
        return documents, next_token

    async def status(self, user_id: uuid.UUID) -> KycStatus:
        user = await self.accounts.get_user(user_id)
        async with self.uow.transaction() as repo:
            pending = await repo.has_pending_document(user_id)
        return KycStatus(user_id, user.kyc_level, limits_for(user.kyc_level), pending)
