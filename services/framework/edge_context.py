"""Where a call comes from: the client address and, for a user, the device.

The client IP of a call is the first address that parses of:
- `x-envoy-external-address`, then the first `x-forwarded-for` entry, but only when the
  call's verified mTLS identity is a trusted forwarder (`FORWARDERS`): the gateway, whose
  Envoy sets both headers itself from the TCP connection and overwrites whatever a client
  wrote there (`use_remote_address`, scripts/gateway_config.py), and the operator's
  tooling, which speaks for the client it replays;
- else the call's peer address. Any other caller's forwarding headers are ignored: a
  peer cannot claim to be someone else's client.

For a call made by a `user` principal (services/framework/edge_auth.py) the handler asks
`client_context(context)` for that IP and the device fingerprint: sha256 hex of
"user-agent|accept-language|ip|accept-encoding", each header as received (empty when
absent). Operators and services get None: their headers are not a payer's device.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.framework.edge_auth import Kind, current_principal
from services.framework.identity import Caller, identify
from services.framework.topology import GATEWAY, OPERATOR

EXTERNAL_ADDRESS = "x-envoy-external-address"
FORWARDED_FOR = "x-forwarded-for"
FORWARDERS = (GATEWAY, OPERATOR)


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


def forwarder(caller: Caller) -> bool:
    """Whether the caller's forwarding headers name the client (see the module docstring)."""
    return caller.verified and caller.name in FORWARDERS


def client_ip(metadata: Iterable[tuple[str, Any]], peer: str, forwarded: bool) -> str:
    """The client's address; `forwarded`: the caller is a trusted forwarder."""
    if forwarded:
        headers = _headers(metadata)
        for candidate in (
            headers.get(EXTERNAL_ADDRESS, ""),
            headers.get(FORWARDED_FOR, "").split(",")[0],
        ):
            if ip := _ip(candidate):
                return ip
    return peer_ip(peer)


def device_fingerprint(user_agent: str, accept_language: str, ip: str, accept_encoding: str) -> str:
    """sha256 hex of "user-agent|accept-language|ip|accept-encoding"."""
    return hashlib.sha256(f"{user_agent}|{accept_language}|{ip}|{accept_encoding}".encode()).hexdigest()


def derive(metadata: Iterable[tuple[str, Any]], peer: str, forwarded: bool) -> EdgeClient:
    pairs = list(metadata)
    headers = _headers(pairs)
    ip = client_ip(pairs, peer, forwarded)
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
    return derive(context.invocation_metadata() or (), context.peer() or "", forwarder(identify(context)))
