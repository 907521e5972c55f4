"""Webhook endpoints: registered with a signing secret shown once and kept encrypted
(see adapters/secret_box.py), listed without it, and deleted (softly: the row stays for
the audit trail, the secret is wiped). The notifications service sends the deliveries,
reading each endpoint with its secret through the internal ListWebhookEndpointsForDelivery."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence

from services.framework import paging
from services.framework.db import Database
from services.merchants.adapters.repository import MerchantRepository
from services.merchants.adapters.secret_box import SecretBox
from services.merchants.domain.credentials import new_webhook_secret
from services.merchants.domain.model import (
    IdempotencyKey,
    MerchantNotFound,
    WebhookEndpoint,
    WebhookEndpointNotFound,
    check_event_types,
)
from services.merchants.service_layer import pages
from services.merchants.service_layer.onboarding import Clock, utc_now


class WebhookEndpoints:
    def __init__(
        self, db: Database, box: SecretBox, publishers: Collection[str], clock: Clock = utc_now
    ) -> None:
        self.db = db
        self.box = box
        self.publishers = publishers  # the services whose events a merchant may subscribe to
        self.clock = clock

    async def create(
        self,
        merchant_id: uuid.UUID,
        url: str,
        event_types: tuple[str, ...],
        description: str,
        idempotency: IdempotencyKey | None,
    ) -> tuple[WebhookEndpoint, str]:
        """The endpoint and its signing secret; a replay returns the first endpoint and
        no secret ("")."""
        check_event_types(event_types, self.publishers)
        endpoint_id, secret = uuid.uuid4(), new_webhook_secret()
        async with self.db.transaction() as conn:
            repo = MerchantRepository(conn)
            first = await repo.claim_idempotency_key(idempotency, endpoint_id) if idempotency else None
            if first is not None:
                endpoint = await repo.get_webhook_endpoint(merchant_id, first)
                assert endpoint is not None  # the request (and so the merchant) matched
                return endpoint, ""
            if await repo.get_merchant(merchant_id) is None:
                raise MerchantNotFound(merchant_id)
            endpoint = await repo.insert_webhook_endpoint(
                endpoint_id,
                merchant_id,
                url,
                event_types,
                description,
                self.box.seal(secret, endpoint_id),
                self.box.key_id,
            )
            await repo.audit(
                merchant_id,
                "WEBHOOK_ENDPOINT",
                endpoint_id,
                "CREATED",
                {"url": url, "event_types": list(event_types)},
            )
        return endpoint, secret

    async def list(
        self, merchant_id: uuid.UUID, page_size: int, page_token: str
    ) -> tuple[list[WebhookEndpoint], str]:
        scope = f"webhookEndpoints/{merchant_id}"
        after = pages.decode(page_token, scope)
        size = paging.page_size(page_size)
        async with self.db.transaction() as conn:
            repo = MerchantRepository(conn)
            if await repo.get_merchant(merchant_id) is None:
                raise MerchantNotFound(merchant_id)
            rows = await repo.list_webhook_endpoints(merchant_id, size + 1, after)
        return pages.page(rows, size, scope, lambda e: (e.created_at, e.endpoint_id))

    async def for_delivery(self, merchant_id: uuid.UUID) -> Sequence[tuple[WebhookEndpoint, str]]:
        """The merchant's live endpoints with their signing secrets, for the notifications
        service only (the allowlist says so); none for an unknown merchant."""
        async with self.db.transaction() as conn:
            rows = await MerchantRepository(conn).webhook_endpoints_with_secrets(merchant_id)
        return [
            (endpoint, self.box.open(sealed, key_id, endpoint.endpoint_id))
            for endpoint, sealed, key_id in rows
        ]

    async def delete(self, merchant_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
        """Deletes the endpoint; deleting one already deleted succeeds, one that never
        existed is WEBHOOK_ENDPOINT_NOT_FOUND."""
        async with self.db.transaction() as conn:
            repo = MerchantRepository(conn)
            endpoint = await repo.get_webhook_endpoint(merchant_id, endpoint_id, lock=True)
            if endpoint is None:
                if await repo.get_merchant(merchant_id) is None:
                    raise MerchantNotFound(merchant_id)
                raise WebhookEndpointNotFound(merchant_id, endpoint_id)
            if endpoint.deleted_at is not None:
                return
            await repo.delete_webhook_endpoint(endpoint_id, self.clock())
            await repo.audit(merchant_id, "WEBHOOK_ENDPOINT", endpoint_id, "DELETED", {"url": endpoint.url})
