"""Clients for peer services: generated stubs over channels with a deadline on every call
and retries only on UNAVAILABLE (gRPC's own retry policy, with exponential backoff)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

S = TypeVar("S")

_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],  # every method of every service
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


class _DefaultDeadline(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        if client_call_details.timeout is None:
            client_call_details = client_call_details._replace(timeout=self.seconds)
        return await continuation(client_call_details, request)


def channel(address: str, deadline_seconds: float) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        address,
        options=[("grpc.enable_retries", 1), ("grpc.service_config", _SERVICE_CONFIG)],
        interceptors=[_DefaultDeadline(deadline_seconds), *aio_client_interceptors()],
    )


class Peers:
    """The channels to a service's peers, opened lazily and closed on shutdown."""

    def __init__(self, addresses: dict[str, str], deadline_seconds: float) -> None:
        self.addresses = addresses
        self.deadline_seconds = deadline_seconds
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, peer: str, stub_cls: type[S]) -> S:
        if peer not in self._channels:
            self._channels[peer] = channel(self.addresses[peer], self.deadline_seconds)
        return stub_cls(self._channels[peer])  # type: ignore[call-arg]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()


def call_metadata(context: Any) -> tuple[tuple[str, str], ...]:
    """Metadata worth forwarding from an incoming call to a peer call (the idempotency key)."""
    return tuple((k, v) for k, v in context.invocation_metadata() if k == "idempotency-key")
