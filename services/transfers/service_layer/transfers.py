"""P2P transfers and payouts: record the client's request, hand the work to an orchestrator
saga, and answer with the transfer or payout as the saga left it.

The record is written (PENDING) before the saga starts, and the saga's reference is derived
from the client's id, so a client retrying with the same id after any failure (ours, the
orchestrator's, the network's) reaches the same saga: the money moves once. The saga
reports each outcome back through RecordTransferOutcome / RecordPayoutOutcome, idempotent
on the orchestrator's reference.

The create call answers: COMPLETED (a payout also PROCESSING: the rail took it and the
funds are in payout clearing) with the record; FAILED with the refusal that failed it
(its reason and the refusing peer's details, replayed the same way on every retry); still
running with ABORTED / REQUEST_IN_PROGRESS — retry the same request, or read it with
GetTransfer / GetPayout.

Who may: operators and services any transfer or payout. A user (`owner` below, the
principal's user id) only from a wallet of their own — another's source wallet is answered
WALLET_NOT_FOUND, exactly as a wallet that does not exist, before anything is recorded —
and reads only the transfers from or to their wallets and the payouts from them; another's
is TRANSFER_NOT_FOUND / PAYOUT_NOT_FOUND. Owners are the wallet service's (GetWallet,
ListWallets). A user's call also carries their device and IP (services/framework/
edge_context.py) into the saga's input, for the fraud check.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from interpay.common.v1.money_pb2 import Money
from interpay.orchestrator.v1 import orchestrator_service_pb2 as saga_pb
from interpay.orchestrator.v1.orchestrator_service_pb2_grpc import OrchestratorServiceStub
from interpay.payments.v1.payments_service_pb2 import ClientContext
from interpay.transfers.v1.transfers_service_pb2 import ExternalAccount
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.framework import paging
from services.framework.db import Database
from services.framework.edge_context import EdgeClient
from services.framework.errors import Aborted
from services.transfers.adapters.repository import TransferRepository
from services.transfers.domain.model import (
    FlowFailed,
    IdReused,
    Payout,
    PayoutNotFound,
    PayoutRequest,
    ReferenceReused,
    Transfer,
    TransferNotFound,
    TransferRequest,
    WalletNotFound,
    check_payout_outcome,
    check_transfer_outcome,
    failure_status,
)

R = TypeVar("R", Transfer, Payout)
log = logging.getLogger("interpay.transfers")


class RequestInProgress(Aborted):
    default_reason = "REQUEST_IN_PROGRESS"


def request_hash(message: Message) -> bytes:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).digest()


def split_failure(saga_failure: str) -> tuple[str, dict[str, str]]:
    """A saga's failure "REASON: message {metadata as JSON}" → (message, metadata)."""
    _, _, text = saga_failure.partition(": ")
    head, brace, tail = text.rpartition(" {")
    if brace:
        try:
            metadata = json.loads("{" + tail)
        except ValueError:
            metadata = None
        if isinstance(metadata, dict):
            return head, {str(k): str(v) for k, v in metadata.items()}
    return text, {}


def encode_client(client: EdgeClient | None) -> bytes:
    """A user's device and IP as kept with their transfer or payout; b"" for none."""
    if client is None:
        return b""
    context = ClientContext(device_fingerprint=client.device_fingerprint, ip_address=client.ip_address)
    return context.SerializeToString(deterministic=True)


def _client_context(kept: bytes | None) -> ClientContext | None:
    return ClientContext.FromString(kept) if kept else None


class Transfers:
    def __init__(
        self,
        db: Database,
        orchestrator: OrchestratorServiceStub,
        wallet: WalletServiceStub,
        saga_deadline_seconds: float = 30.0,
    ) -> None:
        self.db = db
        self.orchestrator = orchestrator
        self.wallet = wallet
        self.saga_deadline = saga_deadline_seconds

    # -- ownership ------------------------------------------------------------------------
    async def _check_source(self, wallet_id: uuid.UUID, owner: str | None) -> None:
        """Refuses a user naming a source wallet that is not theirs, as if it did not exist."""
        if owner is None:
            return
        try:
            reply = await self.wallet.GetWallet(wallet_pb.GetWalletRequest(wallet_id=str(wallet_id)))
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                raise WalletNotFound(wallet_id) from None
            raise
        w = reply.wallet
        if w.owner_type != wallet_pb.OWNER_TYPE_USER or w.owner_id != owner:
            raise WalletNotFound(wallet_id)

    async def _wallets_of(self, owner: str) -> set[uuid.UUID]:
        reply = await self.wallet.ListWallets(
            wallet_pb.ListWalletsRequest(owner_type=wallet_pb.OWNER_TYPE_USER, owner_id=owner)
        )
        return {uuid.UUID(w.wallet_id) for w in reply.wallets}

    async def _listed_wallets(self, wallet_id: uuid.UUID | None, owner: str | None) -> list[uuid.UUID] | None:
        """The wallets a list may show: every one (None) for operators and services; for a
        user their own, or the one they named if it is theirs."""
        if owner is None:
            return None if wallet_id is None else [wallet_id]
        own = await self._wallets_of(owner)
        if wallet_id is None:
            return sorted(own)
        if wallet_id not in own:
            raise WalletNotFound(wallet_id)
        return [wallet_id]

    async def _saga(self, start: Callable[..., Awaitable[Any]], request: Message) -> saga_pb.Saga | None:
        """Starts (or finds) the saga; None if it outlived the call's deadline and carries
        on in the background."""
        try:
            reply = await start(request, timeout=self.saga_deadline)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                return None
            raise
        return reply.saga  # type: ignore[no-any-return]

    async def _transfer_saga(self, transfer: Transfer) -> saga_pb.Saga | None:
        return await self._saga(
            self.orchestrator.StartTransferSaga,
            saga_pb.StartTransferSagaRequest(
                reference=transfer.saga_reference,
                input=saga_pb.TransferSagaInput(
                    transfer_id=str(transfer.transfer_id),
                    source_wallet_id=str(transfer.source_wallet_id),
                    destination_wallet_id=str(transfer.destination_wallet_id),
                    amount=Money(amount_minor=transfer.amount, currency=transfer.currency),
                    description=transfer.description,
                    client_context=_client_context(transfer.client_context),
                ),
            ),
        )

    async def _payout_saga(self, payout: Payout) -> saga_pb.Saga | None:
        return await self._saga(
            self.orchestrator.StartPayoutSaga,
            saga_pb.StartPayoutSagaRequest(
                reference=payout.saga_reference,
                input=saga_pb.PayoutSagaInput(
                    payout_id=str(payout.payout_id),
                    source_wallet_id=str(payout.source_wallet_id),
                    destination=ExternalAccount.FromString(payout.destination),
                    amount=Money(amount_minor=payout.amount, currency=payout.currency),
                    client_context=_client_context(payout.client_context),
                ),
            ),
        )

    async def resume_pending(self, older_than_seconds: float, batch: int = 50) -> int:
        """Starts (or finds) the saga of every transfer and payout left PENDING for a while:
        one whose create call died before its saga started, and whose client never
        retried, still ends COMPLETED or FAILED. Starting a saga that exists is harmless."""
        async with self.db.transaction() as conn:
            repo = TransferRepository(conn)
            transfers = await repo.stale_transfers(older_than_seconds, batch)
            payouts = await repo.stale_payouts(older_than_seconds, batch)
        starts: list[tuple[str, uuid.UUID, Callable[[], Awaitable[saga_pb.Saga | None]]]] = [
            *(("transfer", t.transfer_id, functools.partial(self._transfer_saga, t)) for t in transfers),
            *(("payout", p.payout_id, functools.partial(self._payout_saga, p)) for p in payouts),
        ]
        for kind, subject_id, start in starts:
            try:
                await start()
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "could not resume a pending saga",
                    extra={"kind": kind, "id": str(subject_id), "peer_code": exc.code().name},
                )
        return len(starts)

    # -- transfers ------------------------------------------------------------------------
    async def create(self, request: TransferRequest, owner: str | None = None) -> Transfer:
        await self._check_source(request.source_wallet_id, owner)
        async with self.db.transaction() as conn:
            transfer = await TransferRepository(conn).insert_or_get(request)
        mismatched = transfer.mismatches(request)
        if mismatched:
            raise IdReused("transfer", request.transfer_id, mismatched)
        if transfer.state == "COMPLETED":
            return transfer
        if transfer.state == "FAILED" and transfer.failure_message is not None:
            raise FlowFailed("transfer", transfer, transfer.transfer_id)
        # PENDING, or FAILED without its details: the saga (started or found) has them.
        saga = await self._transfer_saga(transfer)
        transfer = await self.get(transfer.transfer_id)
        if transfer.state == "FAILED":
            if transfer.failure_message is None and saga is not None and saga.failure_reason:
                message, metadata = split_failure(saga.failure_reason)
                async with self.db.transaction() as conn:
                    described = await TransferRepository(conn).describe_transfer_failure(
                        transfer.transfer_id, message, metadata
                    )
                transfer = described or await self.get(transfer.transfer_id)
            raise FlowFailed("transfer", transfer, transfer.transfer_id)
        if transfer.state == "PENDING":
            raise RequestInProgress(
                f"transfer {transfer.transfer_id} is still being processed; retry the same request shortly",
                metadata={"transfer_id": str(transfer.transfer_id), "saga_id": saga.saga_id if saga else ""},
            )
        return transfer

    async def get(self, transfer_id: uuid.UUID, owner: str | None = None) -> Transfer:
        async with self.db.transaction() as conn:
            transfer = await TransferRepository(conn).get(transfer_id)
        if transfer is None:
            raise TransferNotFound(transfer_id)
        if owner is not None:
            own = await self._wallets_of(owner)
            if transfer.source_wallet_id not in own and transfer.destination_wallet_id not in own:
                raise TransferNotFound(transfer_id)
        return transfer

    async def list_transfers(
        self, wallet_id: uuid.UUID | None, page_size: int, page_token: str, owner: str | None = None
    ) -> tuple[list[Transfer], str]:
        wallet_ids = await self._listed_wallets(wallet_id, owner)
        cursor = paging.decode(page_token)
        size = paging.page_size(page_size)
        before = (cursor[0], cursor[1]) if cursor and len(cursor) == 2 else None
        async with self.db.transaction() as conn:
            rows = await TransferRepository(conn).list_for_wallet(wallet_ids, size + 1, before)
        return _paged(rows, size, lambda t: t.transfer_id)

    async def record_transfer_outcome(
        self,
        transfer_id: uuid.UUID,
        state: str,
        reference: str,
        ledger_transaction_id: uuid.UUID | None,
        failure_reason: str,
        digest: bytes,
    ) -> Transfer:
        async with self.db.transaction() as conn:
            repo = TransferRepository(conn)
            transfer = await repo.get(transfer_id, lock=True)
            if transfer is None:
                raise TransferNotFound(transfer_id)
            recorded = await repo.recorded_outcome(reference)
            if recorded is not None:
                if recorded != (transfer_id, digest):
                    raise ReferenceReused(reference)
                return transfer
            if check_transfer_outcome(transfer, state):
                failed = state == "FAILED"
                transfer = await repo.settle_transfer(
                    transfer_id,
                    state,
                    ledger_transaction_id,
                    failure_status(failure_reason) if failed else None,
                    failure_reason if failed else None,
                )
            if not await repo.record_outcome(reference, transfer_id, digest):
                raise ReferenceReused(reference)
            return transfer

    # -- payouts --------------------------------------------------------------------------
    async def create_payout(self, request: PayoutRequest, owner: str | None = None) -> Payout:
        await self._check_source(request.source_wallet_id, owner)
        async with self.db.transaction() as conn:
            payout = await TransferRepository(conn).insert_or_get_payout(request)
        mismatched = payout.mismatches(request)
        if mismatched:
            raise IdReused("payout", request.payout_id, mismatched)
        if payout.state in ("PROCESSING", "COMPLETED"):
            return payout
        if payout.state == "FAILED" and payout.failure_message is not None:
            raise FlowFailed("payout", payout, payout.payout_id)
        saga = await self._payout_saga(payout)
        payout = await self.get_payout(payout.payout_id)
        if payout.state == "FAILED":
            if payout.failure_message is None and saga is not None and saga.failure_reason:
                message, metadata = split_failure(saga.failure_reason)
                async with self.db.transaction() as conn:
                    described = await TransferRepository(conn).describe_payout_failure(
                        payout.payout_id, message, metadata
                    )
                payout = described or await self.get_payout(payout.payout_id)
            raise FlowFailed("payout", payout, payout.payout_id)
        if payout.state == "PENDING":
            raise RequestInProgress(
                f"payout {payout.payout_id} is still being processed; retry the same request shortly",
                metadata={"payout_id": str(payout.payout_id), "saga_id": saga.saga_id if saga else ""},
            )
        return payout

    async def get_payout(self, payout_id: uuid.UUID, owner: str | None = None) -> Payout:
        async with self.db.transaction() as conn:
            payout = await TransferRepository(conn).get_payout(payout_id)
        if payout is None:
            raise PayoutNotFound(payout_id)
        if owner is not None and payout.source_wallet_id not in await self._wallets_of(owner):
            raise PayoutNotFound(payout_id)
        return payout

    async def list_payouts(
        self, wallet_id: uuid.UUID | None, page_size: int, page_token: str, owner: str | None = None
    ) -> tuple[list[Payout], str]:
        wallet_ids = await self._listed_wallets(wallet_id, owner)
        cursor = paging.decode(page_token)
        size = paging.page_size(page_size)
        before = (cursor[0], cursor[1]) if cursor and len(cursor) == 2 else None
        async with self.db.transaction() as conn:
            rows = await TransferRepository(conn).list_payouts(wallet_ids, size + 1, before)
        return _paged(rows, size, lambda p: p.payout_id)

    async def record_payout_outcome(
        self,
        payout_id: uuid.UUID,
        state: str,
        reference: str,
        rail_reference: str,
        ledger_transaction_id: uuid.UUID | None,
        failure_reason: str,
        digest: bytes,
    ) -> Payout:
        async with self.db.transaction() as conn:
            repo = TransferRepository(conn)
            payout = await repo.get_payout(payout_id, lock=True)
            if payout is None:
                raise PayoutNotFound(payout_id)
            recorded = await repo.recorded_outcome(reference)
            if recorded is not None:
                if recorded != (payout_id, digest):
                    raise ReferenceReused(reference)
                return payout
            if check_payout_outcome(payout, state):
                failed = state == "FAILED"
                payout = await repo.move_payout(
                    payout_id,
                    state,
                    rail_reference or None,
                    ledger_transaction_id,
                    failure_status(failure_reason) if failed else None,
                    failure_reason if failed else None,
                )
            if not await repo.record_outcome(reference, payout_id, digest):
                raise ReferenceReused(reference)
            return payout


def _paged(rows: list[R], size: int, key: Callable[[R], uuid.UUID]) -> tuple[list[R], str]:
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        token = paging.encode([rows[-1].created_at.isoformat(), str(key(rows[-1]))])
    return rows, token
