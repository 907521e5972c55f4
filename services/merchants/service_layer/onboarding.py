"""Merchants: onboarding with a settlement wallet, lookups, and the lifecycle.

Onboarding spans two services, so it cannot be one transaction. It is three steps, each
safe to repeat: (1) the merchant row is committed PENDING without a wallet (with the
client's Idempotency-Key, if any, in the same transaction); (2) the wallet service opens
the merchant's wallet, one per owner and currency, so a repeat finds the first one;
(3) the wallet id is stored once. A failure between the steps leaves a PENDING merchant
without a wallet, which a retry under the same Idempotency-Key, ActivateMerchant, or the
repair job (every few seconds, on every replica) completes.

When the wallet service cannot be reached during CreateMerchant, the call still succeeds
with the committed PENDING merchant, its settlement wallet not open yet: answering
UNAVAILABLE after the merchant was committed would invite the client to retry (the one
code clients retry) and, without an Idempotency-Key, onboard the merchant twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc

from services.framework import paging
from services.framework.db import Database
from services.merchants.adapters.repository import MerchantRepository
from services.merchants.adapters.settlement_wallets import SettlementWallets
from services.merchants.domain.model import (
    IdempotencyKey,
    Merchant,
    MerchantNotFound,
    MerchantState,
    OnboardMerchant,
    needs_transition,
)
from services.merchants.service_layer import pages

log = logging.getLogger("interpay.merchants.onboarding")

Clock = Callable[[], datetime]
# Peer failures that say nothing about the request: the wallet step is left to the repair job.
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def utc_now() -> datetime:
    return datetime.now(UTC)


class Merchants:
    def __init__(self, db: Database, wallets: SettlementWallets, clock: Clock = utc_now) -> None:
        self.db = db
        self.wallets = wallets
        self.clock = clock

    async def onboard(self, command: OnboardMerchant, idempotency: IdempotencyKey | None) -> Merchant:
        merchant_id = uuid.uuid4()
        async with self.db.transaction() as conn:
            repo = MerchantRepository(conn)
            first = await repo.claim_idempotency_key(idempotency, merchant_id) if idempotency else None
            if first is None:
                merchant = await repo.insert_merchant(merchant_id, command)
                await repo.audit(
                    merchant_id,
                    "MERCHANT",
                    merchant_id,
                    "ONBOARDED",
                    {"state": merchant.state.value, "settlement_currency": command.settlement_currency},
                )
            else:
                replayed = await repo.get_merchant(first)
                assert replayed is not None  # created in the transaction that recorded the key
                merchant = replayed
        if merchant.settlement_wallet_id is None:
            try:
                merchant = await self._open_settlement_wallet(merchant)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _TRANSIENT:
                    raise
                log.warning(
                    "settlement wallet not opened yet; the repair job will open it",
                    extra={"merchant_id": str(merchant.merchant_id), "peer_code": exc.code().name},
                )
        return merchant

    async def _open_settlement_wallet(self, merchant: Merchant) -> Merchant:
        wallet_id = await self.wallets.open(merchant.merchant_id, merchant.settlement_currency)
        async with self.db.transaction() as conn:
            repo = MerchantRepository(conn)
            if await repo.set_settlement_wallet(merchant.merchant_id, wallet_id):
                await repo.audit(
                    merchant.merchant_id,
                    "MERCHANT",
                    merchant.merchant_id,
                    "SETTLEMENT_WALLET_OPENED",
                    {"wallet_id": str(wallet_id)},
                )
            stored = await repo.get_merchant(merchant.merchant_id)
        assert stored is not None
        return stored

    async def open_missing_wallets(self, grace: timedelta = timedelta(seconds=10), batch: int = 20) -> int:
        """Finishes onboardings whose wallet step failed (run periodically). Merchants
        younger than `grace` are left to the request still creating them; racing it is
        harmless anyway, as every step is idempotent."""
        async with self.db.transaction() as conn:
            due = await MerchantRepository(conn).merchants_without_wallet(self.clock() - grace, batch)
        for merchant in due:
            try:
                await self._open_settlement_wallet(merchant)
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "settlement wallet still cannot be opened; retrying later",
                    extra={"merchant_id": str(merchant.merchant_id), "peer_code": exc.code().name},
                )
                return 0
        return len(due)

    async def get(self, merchant_id: uuid.UUID) -> Merchant:
        async with self.db.transaction() as conn:
            merchant = await MerchantRepository(conn).get_merchant(merchant_id)
        if merchant is None:
            raise MerchantNotFound(merchant_id)
        return merchant

    async def list(
        self, state: MerchantState | None, page_size: int, page_token: str
    ) -> tuple[list[Merchant], str]:
        scope = f"merchants/{state.value if state else '*'}"
        after = pages.decode(page_token, scope)
        size = paging.page_size(page_size)
        async with self.db.transaction() as conn:
            rows = await MerchantRepository(conn).list_merchants(state, size + 1, after)
        return pages.page(rows, size, scope, lambda m: (m.created_at, m.merchant_id))

    async def activate(self, merchant_id: uuid.UUID) -> Merchant:
        merchant = await self.get(merchant_id)
        if merchant.state is MerchantState.PENDING and merchant.settlement_wallet_id is None:
            merchant = await self._open_settlement_wallet(merchant)  # finish onboarding first
        return await self._transition(merchant_id, MerchantState.ACTIVE, "")

    async def suspend(self, merchant_id: uuid.UUID, reason: str) -> Merchant:
        return await self._transition(merchant_id, MerchantState.SUSPENDED, reason)

    async def _transition(self, merchant_id: uuid.UUID, target: MerchantState, reason: str) -> Merchant:
        async with self.db.transaction() as conn:
            repo = MerchantRepository(conn)
            merchant = await repo.get_merchant(merchant_id, lock=True)
            if merchant is None:
                raise MerchantNotFound(merchant_id)
            if not needs_transition(merchant, target):
                return merchant
            updated = await repo.set_state(merchant_id, target, reason)
            await repo.audit(
                merchant_id,
                "MERCHANT",
                merchant_id,
                "ACTIVATED" if target is MerchantState.ACTIVE else "SUSPENDED",
                {"from": merchant.state.value, "to": target.value, "reason": reason},
            )
        return updated
