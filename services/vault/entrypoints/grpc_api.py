"""The VaultService servicer: proto in -> use case -> proto out. Nothing else lives here."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from interpay.vault.v1 import vault_service_pb2 as pb

from services.framework import idempotency
from services.framework.identity import identify
from services.framework.proto import timestamp
from services.vault.domain.card import Card, CardBrand, CardSecret
from services.vault.domain.keys import DataKey, KeyState
from services.vault.service_layer.vault import Vault

log = logging.getLogger("interpay.vault")

_BRANDS_PB = {brand: pb.CardBrand.Value(f"CARD_BRAND_{brand.value}") for brand in CardBrand}
_KEY_STATES_PB = {
    KeyState.ACTIVE: pb.DataKey.STATE_ACTIVE,
    KeyState.DECRYPT_ONLY: pb.DataKey.STATE_DECRYPT_ONLY,
}


def card_pb(card: Card) -> pb.Card:
    return pb.Card(
        token=str(card.token),
        brand=_BRANDS_PB[card.brand],
        last4=card.last4,
        expiry_month=card.expiry_month,
        expiry_year=card.expiry_year,
        fingerprint=card.fingerprint,
        create_time=timestamp(card.created_at),
    )


def data_key_pb(key: DataKey) -> pb.DataKey:
    message = pb.DataKey(
        version=key.version,
        state=_KEY_STATES_PB[key.state],
        card_count=key.card_count,
        create_time=timestamp(key.created_at),
    )
    if key.deactivated_at is not None:
        message.retire_time.CopyFrom(timestamp(key.deactivated_at))
    return message


class VaultServicer:
    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    async def TokenizeCard(self, request: pb.TokenizeCardRequest, context: Any) -> pb.TokenizeCardResponse:
        card = await self.vault.tokenize(
            CardSecret(
                pan=request.pan,
                expiry_month=request.expiry_month,
                expiry_year=request.expiry_year,
                cardholder_name=request.cardholder_name,
            ),
            caller=str(identify(context)),
            idempotency_key=idempotency.header(context) or "",
        )
        return pb.TokenizeCardResponse(card=card_pb(card))

    async def GetCard(self, request: pb.GetCardRequest, context: Any) -> pb.GetCardResponse:
        return pb.GetCardResponse(card=card_pb(await self.vault.get(uuid.UUID(request.token))))

    async def DeleteCard(self, request: pb.DeleteCardRequest, context: Any) -> pb.DeleteCardResponse:
        await self.vault.delete(uuid.UUID(request.token), caller=str(identify(context)))
        return pb.DeleteCardResponse()

    async def DetokenizeCard(
        self, request: pb.DetokenizeCardRequest, context: Any
    ) -> pb.DetokenizeCardResponse:
        caller = identify(context)  # admitted by the allowlist: the orchestrator
        card, secret = await self.vault.detokenize(
            uuid.UUID(request.token), uuid.UUID(request.payment_id), caller=str(caller)
        )
        log.info(
            "card detokenized",
            extra={"token": request.token, "payment_id": request.payment_id, "caller": str(caller)},
        )
        return pb.DetokenizeCardResponse(
            pan=secret.pan,
            expiry_month=secret.expiry_month,
            expiry_year=secret.expiry_year,
            cardholder_name=secret.cardholder_name,
            brand=_BRANDS_PB[card.brand],
        )

    async def RotateDataKey(self, request: pb.RotateDataKeyRequest, context: Any) -> pb.RotateDataKeyResponse:
        caller = identify(context)
        key, previous = await self.vault.rotate(
            request.reason, request.expected_active_version, caller=str(caller)
        )
        return pb.RotateDataKeyResponse(data_key=data_key_pb(key), previous_version=previous)

    async def GetKeyStatus(self, request: pb.GetKeyStatusRequest, context: Any) -> pb.GetKeyStatusResponse:
        status = await self.vault.key_status()
        return pb.GetKeyStatusResponse(
            active_version=status.active_version,
            data_keys=[data_key_pb(k) for k in status.data_keys],
            cards_pending_reencryption=status.cards_pending_reencryption,
            key_encryption_key_id=status.key_encryption_key_id,
        )
