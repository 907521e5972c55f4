"""A user's device and network, derived at the edge for the fraud check.

For a call made by a `user` principal (services/framework/edge_auth.py) the handler asks
`client_context(context)` for:

- the client IP: through the gateway, `x-envoy-external-address` if it carries one, else
  the peer address of the call. The gateway (scripts/gateway_config.py) leaves
  `use_remote_address` unset, so Envoy neither sets nor appends `x-forwarded-for`, and its
  first address would be whatever the client wrote there; it is not read. A call straight
  over gRPC is from its peer address.
  Caveat: with `use_remote_address` unset Envoy also neither sets nor strips
  `x-envoy-external-address`, so today it is the client's own say, like the fingerprint's
  headers; an edge Envoy with `use_remote_address: true` sets it for external clients and
  drops a client's copy, which makes it trustworthy.
- the device fingerprint: sha256 hex of "user-agent|accept-language|ip|accept-encoding",
  each header as received (empty when absent).

Operators and services get None: their headers are not a payer's device.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.framework.edge_auth import Kind, current_principal
from services.framework.identity import identify
from services.framework.topology import GATEWAY

EXTERNAL_ADDRESS = "x-envoy-external-address"


@dataclass(frozen=True)
class EdgeClient:
    device_fingerprint: str
    ip_address: str


def _headers(metadata: Iterable[tuple[str, Any]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in metadata:
        if isinstance(value, str):
            headers.setdefault(key.lower(), value)
    return headers


def _ip(value: str) -> str:
    """`value` as a normalised IP address, or "" if it is not one."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return ""


def peer_ip(peer: str) -> str:
    """The IP of a gRPC peer string: "ipv4:1.2.3.4:5", "ipv6:[::1]:5" (else "")."""
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        return _ip(rest.rpartition(":")[0])
    if scheme == "ipv6":
        return _ip(rest.rpartition(":")[0].strip("[]"))
    return ""


def client_ip(metadata: Iterable[tuple[str, Any]], peer: str, via_gateway: bool) -> str:
    if via_gateway:
        external = _ip(_headers(metadata).get(EXTERNAL_ADDRESS, ""))
        if external:
            return external
    return peer_ip(peer)


def device_fingerprint(user_agent: str, accept_language: str, ip: str, accept_encoding: str) -> str:
    """sha256 hex of "user-agent|accept-language|ip|accept-encoding"."""
    return hashlib.sha256(f"{user_agent}|{accept_language}|{ip}|{accept_encoding}".encode()).hexdigest()


def derive(metadata: Iterable[tuple[str, Any]], peer: str, via_gateway: bool) -> EdgeClient:
    pairs = list(metadata)
    headers = _headers(pairs)
    ip = client_ip(pairs, peer, via_gateway)
    fingerprint = device_fingerprint(
        headers.get("user-agent", ""),
        headers.get("accept-language", ""),
        ip,
        headers.get("accept-encoding", ""),
    )
    return EdgeClient(device_fingerprint=fingerprint, ip_address=ip)


def client_context(context: Any) -> EdgeClient | None:
    """The calling user's device and IP; None unless the principal is a user."""
    principal = current_principal()
    if principal is None or principal.kind is not Kind.USER:
        return None
    caller = identify(context)
    return derive(
        context.invocation_metadata() or (),
        context.peer() or "",
        via_gateway=caller.verified and caller.name == GATEWAY,
    )
