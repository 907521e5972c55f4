"""The MerchantsService servicer: proto in -> use case -> proto out. Nothing else lives here."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from interpay.common.v1.money_pb2 import Money
from interpay.merchants.v1 import merchants_service_pb2 as pb
from interpay.transfers.v1 import transfers_service_pb2 as transfers_pb

from services.framework.idempotency import for_request as idempotency_key
from services.framework.proto import timestamp
from services.merchants.domain.model import (
    ApiKey,
    ApiKeyScope,
    Merchant,
    MerchantState,
    OnboardMerchant,
    PayoutAccount,
    WebhookEndpoint,
)
from services.merchants.domain.settlement import Settlement
from services.merchants.service_layer.api_keys import ApiKeys
from services.merchants.service_layer.onboarding import Merchants
from services.merchants.service_layer.settlements import Settlements, parse_day
from services.merchants.service_layer.webhooks import WebhookEndpoints


def payout_account_pb(account: PayoutAccount) -> transfers_pb.ExternalAccount:
    out = transfers_pb.ExternalAccount(holder_name=account.holder_name, country_code=account.country_code)
    if account.iban:
        out.iban = account.iban
    else:
        out.domestic_account.CopyFrom(
            transfers_pb.DomesticAccount(
                account_number=account.account_number, routing_number=account.routing_number
            )
        )
    return out


def payout_account(message: transfers_pb.ExternalAccount) -> PayoutAccount:
    if message.WhichOneof("account") == "iban":
        return PayoutAccount(message.holder_name, message.country_code, iban=message.iban)
    return PayoutAccount(
        message.holder_name,
        message.country_code,
        account_number=message.domestic_account.account_number,
        routing_number=message.domestic_account.routing_number,
    )


def merchant_pb(m: Merchant) -> pb.Merchant:
    return pb.Merchant(
        merchant_id=str(m.merchant_id),
        legal_name=m.legal_name,
        display_name=m.display_name,
        contact_email=m.contact_email,
        country_code=m.country_code,
        settlement_currency=m.settlement_currency,
        settlement_wallet_id=str(m.settlement_wallet_id or ""),
        payout_account=payout_account_pb(m.payout_account),
        fee_bps=m.fee_bps,
        state=pb.Merchant.State.Value(f"STATE_{m.state.value}"),
        suspend_reason=m.suspend_reason,
        create_time=timestamp(m.created_at),
        update_time=timestamp(m.updated_at),
    )


def scope_pb(scope: ApiKeyScope) -> pb.ApiKeyScope.ValueType:
    return pb.ApiKeyScope.Value(f"API_KEY_SCOPE_{scope.value}")


def api_key_pb(k: ApiKey, now: datetime) -> pb.ApiKey:
    out = pb.ApiKey(
        key_id=str(k.key_id),
        merchant_id=str(k.merchant_id),
        public_id=k.public_id,
        scopes=[scope_pb(s) for s in k.scopes],
        state=pb.ApiKey.State.Value(f"STATE_{k.state_at(now).value}"),
        rate_limit_per_minute=k.rate_limit_per_minute,
        create_time=timestamp(k.created_at),
    )
    if k.expires_at is not None:
        out.expire_time.CopyFrom(timestamp(k.expires_at))
    if k.last_used_at is not None:
        out.last_used_time.CopyFrom(timestamp(k.last_used_at))
    return out


def webhook_endpoint_pb(e: WebhookEndpoint) -> pb.WebhookEndpoint:
    return pb.WebhookEndpoint(
        endpoint_id=str(e.endpoint_id),
        merchant_id=str(e.merchant_id),
        url=e.url,
        event_types=list(e.event_types),
        description=e.description,
        create_time=timestamp(e.created_at),
    )


def settlement_pb(s: Settlement) -> pb.Settlement:
    def money(amount_minor: int) -> Money:
        return Money(amount_minor=amount_minor, currency=s.currency)

    return pb.Settlement(
        settlement_id=str(s.settlement_id),
        merchant_id=str(s.merchant_id),
        settlement_date=s.settlement_date.isoformat(),
        gross_captured=money(s.gross_captured_minor),
        refunds=money(s.refunds_minor),
        fees=money(s.fees_minor),
        net=money(s.net_minor),
        state=pb.Settlement.State.Value(f"STATE_{s.state.value}"),
        payout_id=str(s.payout_id or ""),
        failure_reason=s.failure_reason,
        create_time=timestamp(s.created_at),
        update_time=timestamp(s.updated_at),
    )


class MerchantsServicer:
    def __init__(
        self, merchants: Merchants, api_keys: ApiKeys, webhooks: WebhookEndpoints, settlements: Settlements
    ) -> None:
        self.merchants = merchants
        self.api_keys = api_keys
        self.webhooks = webhooks
        self.settlements = settlements

    # -- merchants ----------------------------------------------------------------------
    async def CreateMerchant(
        self, request: pb.CreateMerchantRequest, context: Any
    ) -> pb.CreateMerchantResponse:
        merchant = await self.merchants.onboard(
            OnboardMerchant(
                legal_name=request.legal_name,
                display_name=request.display_name,
                contact_email=request.contact_email,
                country_code=request.country_code,
                settlement_currency=request.settlement_currency,
                payout_account=payout_account(request.payout_account),
                fee_bps=request.fee_bps,
            ),
            idempotency_key(context, "CreateMerchant", request),
        )
        return pb.CreateMerchantResponse(merchant=merchant_pb(merchant))

    async def GetMerchant(self, request: pb.GetMerchantRequest, context: Any) -> pb.GetMerchantResponse:
        merchant = await self.merchants.get(uuid.UUID(request.merchant_id))
        return pb.GetMerchantResponse(merchant=merchant_pb(merchant))

    async def ListMerchants(self, request: pb.ListMerchantsRequest, context: Any) -> pb.ListMerchantsResponse:
        state = (
            MerchantState(pb.Merchant.State.Name(request.state).removeprefix("STATE_"))
            if request.state
            else None
        )
        rows, token = await self.merchants.list(state, request.page_size, request.page_token)
        return pb.ListMerchantsResponse(merchants=[merchant_pb(m) for m in rows], next_page_token=token)

    async def ActivateMerchant(
        self, request: pb.ActivateMerchantRequest, context: Any
    ) -> pb.ActivateMerchantResponse:
        merchant = await self.merchants.activate(uuid.UUID(request.merchant_id))
        return pb.ActivateMerchantResponse(merchant=merchant_pb(merchant))

    async def SuspendMerchant(
        self, request: pb.SuspendMerchantRequest, context: Any
    ) -> pb.SuspendMerchantResponse:
        merchant = await self.merchants.suspend(uuid.UUID(request.merchant_id), request.reason)
        return pb.SuspendMerchantResponse(merchant=merchant_pb(merchant))

    async def GetMerchantForPayment(
        self, request: pb.GetMerchantForPaymentRequest, context: Any
    ) -> pb.GetMerchantForPaymentResponse:
        m = await self.merchants.get(uuid.UUID(request.merchant_id))
        return pb.GetMerchantForPaymentResponse(
            merchant_id=str(m.merchant_id),
            state=pb.Merchant.State.Value(f"STATE_{m.state.value}"),
            settlement_wallet_id=str(m.settlement_wallet_id or ""),
            settlement_currency=m.settlement_currency,
            fee_bps=m.fee_bps,
            display_name=m.display_name,
        )

    # -- API keys -----------------------------------------------------------------------
    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Any) -> pb.CreateApiKeyResponse:
        key, secret = await self.api_keys.create(
            uuid.UUID(request.merchant_id),
            tuple(ApiKeyScope(pb.ApiKeyScope.Name(s).removeprefix("API_KEY_SCOPE_")) for s in request.scopes),
            request.expire_time.ToDatetime(tzinfo=UTC) if request.HasField("expire_time") else None,
            request.rate_limit_per_minute,
            idempotency_key(context, "CreateApiKey", request),
        )
        return pb.CreateApiKeyResponse(api_key=api_key_pb(key, self.api_keys.clock()), secret=secret)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Any) -> pb.ListApiKeysResponse:
        rows, token = await self.api_keys.list(
            uuid.UUID(request.merchant_id), request.page_size, request.page_token
        )
        now = self.api_keys.clock()
        return pb.ListApiKeysResponse(api_keys=[api_key_pb(k, now) for k in rows], next_page_token=token)

    async def RotateApiKey(self, request: pb.RotateApiKeyRequest, context: Any) -> pb.RotateApiKeyResponse:
        new, secret, old = await self.api_keys.rotate(
            uuid.UUID(request.merchant_id),
            uuid.UUID(request.key_id),
            request.overlap.ToTimedelta(),
            idempotency_key(context, "RotateApiKey", request),
        )
        now = self.api_keys.clock()
        return pb.RotateApiKeyResponse(
            api_key=api_key_pb(new, now), secret=secret, previous_api_key=api_key_pb(old, now)
        )

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Any) -> pb.RevokeApiKeyResponse:
        key = await self.api_keys.revoke(uuid.UUID(request.merchant_id), uuid.UUID(request.key_id))
        return pb.RevokeApiKeyResponse(api_key=api_key_pb(key, self.api_keys.clock()))

    async def AuthenticateApiKey(
        self, request: pb.AuthenticateApiKeyRequest, context: Any
    ) -> pb.AuthenticateApiKeyResponse:
        key = await self.api_keys.authenticate(request.public_id, request.secret)
        return pb.AuthenticateApiKeyResponse(
            merchant_id=str(key.merchant_id),
            key_id=str(key.key_id),
            scopes=[scope_pb(s) for s in key.scopes],
            rate_limit_per_minute=key.rate_limit_per_minute,
        )

    # -- webhook endpoints --------------------------------------------------------------
    async def CreateWebhookEndpoint(
        self, request: pb.CreateWebhookEndpointRequest, context: Any
    ) -> pb.CreateWebhookEndpointResponse:
        endpoint, secret = await self.webhooks.create(
            uuid.UUID(request.merchant_id),
            request.url,
            tuple(request.event_types),
            request.description,
            idempotency_key(context, "CreateWebhookEndpoint", request),
        )
        return pb.CreateWebhookEndpointResponse(
            webhook_endpoint=webhook_endpoint_pb(endpoint), signing_secret=secret
        )

    async def ListWebhookEndpoints(
        self, request: pb.ListWebhookEndpointsRequest, context: Any
    ) -> pb.ListWebhookEndpointsResponse:
        rows, token = await self.webhooks.list(
            uuid.UUID(request.merchant_id), request.page_size, request.page_token
        )
        return pb.ListWebhookEndpointsResponse(
            webhook_endpoints=[webhook_endpoint_pb(e) for e in rows], next_page_token=token
        )

    async def ListWebhookEndpointsForDelivery(
        self, request: pb.ListWebhookEndpointsForDeliveryRequest, context: Any
    ) -> pb.ListWebhookEndpointsForDeliveryResponse:
        rows = await self.webhooks.for_delivery(uuid.UUID(request.merchant_id))
        return pb.ListWebhookEndpointsForDeliveryResponse(
            endpoints=[
                pb.WebhookEndpointForDelivery(webhook_endpoint=webhook_endpoint_pb(e), signing_secret=secret)
                for e, secret in rows
            ]
        )

    async def DeleteWebhookEndpoint(
        self, request: pb.DeleteWebhookEndpointRequest, context: Any
    ) -> pb.DeleteWebhookEndpointResponse:
        await self.webhooks.delete(uuid.UUID(request.merchant_id), uuid.UUID(request.endpoint_id))
        return pb.DeleteWebhookEndpointResponse()

    # -- settlements --------------------------------------------------------------------
    async def ListSettlements(
        self, request: pb.ListSettlementsRequest, context: Any
    ) -> pb.ListSettlementsResponse:
        rows, token = await self.settlements.list(
            uuid.UUID(request.merchant_id), request.page_size, request.page_token
        )
        return pb.ListSettlementsResponse(settlements=[settlement_pb(s) for s in rows], next_page_token=token)

    async def GetSettlement(self, request: pb.GetSettlementRequest, context: Any) -> pb.GetSettlementResponse:
        settlement = await self.settlements.get(
            uuid.UUID(request.merchant_id), uuid.UUID(request.settlement_id)
        )
        return pb.GetSettlementResponse(settlement=settlement_pb(settlement))

    async def RunSettlement(self, request: pb.RunSettlementRequest, context: Any) -> pb.RunSettlementResponse:
        done = await self.settlements.run(
            parse_day(request.settlement_date),
            uuid.UUID(request.merchant_id) if request.merchant_id else None,
        )
        return pb.RunSettlementResponse(settlements=[settlement_pb(s) for s in done])
