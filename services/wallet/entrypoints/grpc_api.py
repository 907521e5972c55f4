"""The WalletService servicer: proto in -> use case -> proto out, and who may see which
wallet: a user only their own wallets, a merchant only its own (its settlement wallet);
another's wallet is answered exactly as one that does not exist. Operators and peers (and
internal RPCs, which the allowlist restricts to peers) see every wallet."""

from __future__ import annotations

import uuid
from datetime import UTC
from typing import Any

from interpay.wallet.v1 import wallet_service_pb2 as pb

from services.framework.edge_auth import Kind, current_principal
from services.framework.errors import PermissionDenied
from services.wallet.adapters.messages import KINDS, OWNER_TYPES, entry_pb, hold_pb, wallet_pb
from services.wallet.domain.model import (
    OwnerType,
    SystemAccount,
    TransactionKind,
    TransferOrder,
    Wallet,
    WalletNotFound,
    WalletState,
)
from services.wallet.service_layer.ledger import Ledger, TransferResult

# The owner type whose wallets each kind of edge principal may see.
_OWNED_BY = {Kind.USER: OwnerType.USER, Kind.MERCHANT: OwnerType.MERCHANT}


def _caller_owner() -> tuple[OwnerType, str] | None:
    """The owner the caller is restricted to, or None if it may see every wallet."""
    principal = current_principal()
    if principal is None or principal.kind not in _OWNED_BY:
        return None
    return _OWNED_BY[principal.kind], principal.subject


def _check_owner(owner_type: OwnerType, owner_id: str) -> None:
    """Refuses a user or merchant naming an owner other than itself."""
    own = _caller_owner()
    if own is not None and own != (owner_type, owner_id):
        raise PermissionDenied("a wallet owner must be the caller itself", metadata={"field": "owner_id"})


def _visible(wallet: Wallet) -> Wallet:
    """The wallet, if the caller may see it; else the answer for a wallet that does not exist."""
    own = _caller_owner()
    if own is not None and own != (wallet.owner_type, wallet.owner_id):
        raise WalletNotFound(wallet.wallet_id)
    return wallet


class WalletServicer:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def CreateWallet(self, request: pb.CreateWalletRequest, context: Any) -> pb.CreateWalletResponse:
        _check_owner(OWNER_TYPES[request.owner_type], request.owner_id)
        wallet = await self.ledger.create_wallet(
            OWNER_TYPES[request.owner_type], request.owner_id, request.currency
        )
        return pb.CreateWalletResponse(wallet=wallet_pb(wallet))

    async def GetWallet(self, request: pb.GetWalletRequest, context: Any) -> pb.GetWalletResponse:
        wallet = _visible(await self.ledger.get_wallet(uuid.UUID(request.wallet_id)))
        return pb.GetWalletResponse(wallet=wallet_pb(wallet))

    async def ListWallets(self, request: pb.ListWalletsRequest, context: Any) -> pb.ListWalletsResponse:
        _check_owner(OWNER_TYPES[request.owner_type], request.owner_id)
        wallets = await self.ledger.list_wallets(OWNER_TYPES[request.owner_type], request.owner_id)
        return pb.ListWalletsResponse(wallets=[wallet_pb(w) for w in wallets])

    async def ListWalletTransactions(
        self, request: pb.ListWalletTransactionsRequest, context: Any
    ) -> pb.ListWalletTransactionsResponse:
        if _caller_owner() is not None:
            _visible(await self.ledger.get_wallet(uuid.UUID(request.wallet_id)))
        rows, next_token = await self.ledger.history(
            uuid.UUID(request.wallet_id), request.page_size, request.page_token
        )
        return pb.ListWalletTransactionsResponse(
            transactions=[
                entry_pb(
                    transaction_id=r["transaction_id"],
                    wallet_id=r["wallet_id"],
                    amount=r["amount"],
                    balance_after=r["balance_after"],
                    currency=r["currency"],
                    kind=TransactionKind(r["kind"]),
                    reference=r["reference"],
                    counterparty_wallet_id=r["counterparty_wallet_id"],
                    description=r["description"],
                    created_at=r["created_at"],
                )
                for r in rows
            ],
            next_page_token=next_token,
        )

    async def FundWallet(self, request: pb.FundWalletRequest, context: Any) -> pb.FundWalletResponse:
        result = await self.ledger.fund(
            uuid.UUID(request.wallet_id),
            request.amount.amount_minor,
            request.amount.currency,
            request.reference,
            request.description,
        )
        return pb.FundWalletResponse(
            wallet=wallet_pb(result.destination), transaction_id=str(result.transaction_id)
        )

    async def TransferFunds(self, request: pb.TransferFundsRequest, context: Any) -> pb.TransferFundsResponse:
        kind = KINDS.get(request.kind, TransactionKind.TRANSFER)
        result: TransferResult = await self.ledger.transfer(
            TransferOrder(
                source_wallet_id=uuid.UUID(request.source_wallet_id),
                destination_wallet_id=uuid.UUID(request.destination_wallet_id),
                amount=request.amount.amount_minor,
                currency=request.amount.currency,
                reference=request.reference,
                kind=kind,
                description=request.description,
            )
        )
        return pb.TransferFundsResponse(
            transaction_id=str(result.transaction_id),
            source_wallet=wallet_pb(result.source),
            destination_wallet=wallet_pb(result.destination),
        )

    async def GetSystemWallet(
        self, request: pb.GetSystemWalletRequest, context: Any
    ) -> pb.GetSystemWalletResponse:
        account = SystemAccount(pb.SystemAccount.Name(request.account).removeprefix("SYSTEM_ACCOUNT_"))
        wallet = await self.ledger.system_wallet(account, request.currency)
        return pb.GetSystemWalletResponse(wallet=wallet_pb(wallet))

    async def PlaceHold(self, request: pb.PlaceHoldRequest, context: Any) -> pb.PlaceHoldResponse:
        hold = await self.ledger.place_hold(
            uuid.UUID(request.wallet_id),
            request.amount.amount_minor,
            request.amount.currency,
            request.reference,
            request.expire_time.ToDatetime(tzinfo=UTC),
        )
        return pb.PlaceHoldResponse(hold=hold_pb(hold))

    async def CaptureHold(self, request: pb.CaptureHoldRequest, context: Any) -> pb.CaptureHoldResponse:
        hold, transaction_id = await self.ledger.capture_hold(
            uuid.UUID(request.hold_id),
            uuid.UUID(request.destination_wallet_id),
            request.amount.amount_minor,
            request.amount.currency,
            request.reference,
        )
        return pb.CaptureHoldResponse(hold=hold_pb(hold), transaction_id=str(transaction_id))

    async def ReleaseHold(self, request: pb.ReleaseHoldRequest, context: Any) -> pb.ReleaseHoldResponse:
        return pb.ReleaseHoldResponse(
            hold=hold_pb(await self.ledger.release_hold(uuid.UUID(request.hold_id)))
        )

    async def GetHold(self, request: pb.GetHoldRequest, context: Any) -> pb.GetHoldResponse:
        return pb.GetHoldResponse(hold=hold_pb(await self.ledger.get_hold(uuid.UUID(request.hold_id))))

    async def FreezeWallet(self, request: pb.FreezeWalletRequest, context: Any) -> pb.FreezeWalletResponse:
        wallet = await self.ledger.change_state(
            uuid.UUID(request.wallet_id), WalletState.FROZEN, request.reason
        )
        return pb.FreezeWalletResponse(wallet=wallet_pb(wallet))

    async def UnfreezeWallet(
        self, request: pb.UnfreezeWalletRequest, context: Any
    ) -> pb.UnfreezeWalletResponse:
        wallet = await self.ledger.change_state(uuid.UUID(request.wallet_id), WalletState.ACTIVE, "")
        return pb.UnfreezeWalletResponse(wallet=wallet_pb(wallet))

    async def CloseWallet(self, request: pb.CloseWalletRequest, context: Any) -> pb.CloseWalletResponse:
        wallet = await self.ledger.change_state(uuid.UUID(request.wallet_id), WalletState.CLOSED, "")
        return pb.CloseWalletResponse(wallet=wallet_pb(wallet))

    async def ReconcileLedger(
        self, request: pb.ReconcileLedgerRequest, context: Any
    ) -> pb.ReconcileLedgerResponse:
        found = await self.ledger.reconcile()
        return pb.ReconcileLedgerResponse(
            wallets_checked=found.wallets_checked,
            transactions_checked=found.transactions_checked,
            mismatched_wallet_ids=[str(w) for w in found.mismatched_wallet_ids],
            unbalanced_transaction_ids=[str(t) for t in found.unbalanced_transaction_ids],
        )
