"""Clients for peer services: generated stubs over channels with a deadline on every call
and retries only on UNAVAILABLE (gRPC's own retry policy, with exponential backoff).

Channels are mTLS: the caller presents its own certificate (its identity, which the
peer's allowlist checks) and accepts only a server whose certificate names the peer it
meant to reach. Without TLS files (INTERPAY_PLAINTEXT=1, development only) they are
plaintext."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from services.framework.identity import TlsFiles, channel_options

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


def channel(
    address: str, deadline_seconds: float, tls: TlsFiles | None = None, peer: str = ""
) -> grpc.aio.Channel:
    """A channel to `peer` at `address`: mTLS with `tls` (verifying the server as `peer`),
    else plaintext."""
    if tls is not None and not peer:
        raise ValueError("an mTLS channel needs the peer whose certificate to expect")
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _SERVICE_CONFIG),
        # A peer that restarted is reached again within a second or two, not after gRPC's
        # default reconnect backoff (up to two minutes) following repeated failures.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    interceptors = [_DefaultDeadline(deadline_seconds), *aio_client_interceptors()]
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        address,
        tls.channel_credentials(),
        options=options + channel_options(peer),
        interceptors=interceptors,
    )


class Peers:
    """The channels to a service's peers, opened lazily and closed on shutdown."""

    def __init__(
        self, addresses: dict[str, str], deadline_seconds: float, tls: TlsFiles | None = None
    ) -> None:
        self.addresses = addresses
        self.deadline_seconds = deadline_seconds
        self.tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, peer: str, stub_cls: type[S]) -> S:
        if peer not in self._channels:
            self._channels[peer] = channel(self.addresses[peer], self.deadline_seconds, self.tls, peer)
        return stub_cls(self._channels[peer])  # type: ignore[call-arg]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()


def call_metadata(context: Any) -> tuple[tuple[str, str], ...]:
    """Metadata worth forwarding from an incoming call to a peer call (the idempotency key)."""
    return tuple((k, v) for k, v in context.invocation_metadata() if k == "idempotency-key")
