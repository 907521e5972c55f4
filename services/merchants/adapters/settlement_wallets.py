"""The wallet service, as the merchants service uses it: opening a merchant's
settlement wallet through the wallet's public CreateWallet over gRPC."""

from __future__ import annotations

import uuid

import grpc
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub


class SettlementWallets:
    def __init__(self, wallet: WalletServiceStub) -> None:
        self.wallet = wallet

    async def open(self, merchant_id: uuid.UUID, currency: str) -> uuid.UUID:
        """The merchant's wallet in `currency`, opened now or found if an earlier attempt
        opened it (the wallet service keeps one wallet per owner and currency and answers
        ALREADY_EXISTS for a second), so calling this again after any failure is safe.
        Other failures propagate: the caller's merchant stays without a wallet, and a
        retry or the repair job finishes it."""
        try:
            created = await self.wallet.CreateWallet(
                wallet_pb.CreateWalletRequest(
                    owner_type=wallet_pb.OWNER_TYPE_MERCHANT, owner_id=str(merchant_id), currency=currency
                )
            )
            return uuid.UUID(created.wallet.wallet_id)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        listed = await self.wallet.ListWallets(
            wallet_pb.ListWalletsRequest(owner_type=wallet_pb.OWNER_TYPE_MERCHANT, owner_id=str(merchant_id))
        )
        for wallet in listed.wallets:
            if wallet.currency == currency:
                return uuid.UUID(wallet.wallet_id)
        raise RuntimeError(
            f"the wallet service reported a {currency} wallet for merchant {merchant_id} but lists none"
        )
