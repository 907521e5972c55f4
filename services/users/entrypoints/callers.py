"""Who is calling and from where, read from the call's metadata.

The source address is the first that parses as an IP of: `x-envoy-external-address` (set
by an edge Envoy that trusts no client-supplied address), the first `x-forwarded-for`
entry (the client, as the proxies in front report it), then the gRPC peer. The actor is
the user named by a valid access token in `authorization`, else "anonymous": enforcing
who may call what is the edge's job (the security issue); here it is recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jwt

from services.users.adapters.audit import Caller, valid_ip
from services.users.adapters.tokens import TokenIssuer

USER_AGENT_MAX = 512


def _metadata(pairs: Iterable[tuple[str, Any]]) -> dict[str, str]:
    return {k.lower(): v for k, v in pairs if isinstance(v, str)}


def peer_ip(peer: str) -> str:
    """The address of a gRPC peer string: "ipv4:1.2.3.4:5678" or "ipv6:[::1]:5678"."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


def source_ip(metadata: Mapping[str, str], peer: str) -> str:
    candidates = [
        metadata.get("x-envoy-external-address", ""),
        metadata.get("x-forwarded-for", "").split(",")[0],
        peer_ip(peer),
    ]
    for candidate in candidates:
        ip = valid_ip(candidate.strip())
        if ip is not None:
            return ip
    return ""


def actor(metadata: Mapping[str, str], tokens: TokenIssuer) -> str:
    scheme, _, token = metadata.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "anonymous"
    try:
        claims = tokens.verify(token.strip())
    except jwt.PyJWTError:
        return "anonymous"
    return f"user:{claims['sub']}"


def identify(context: Any, tokens: TokenIssuer) -> Caller:
    metadata = _metadata(context.invocation_metadata() or ())
    return Caller(
        actor=actor(metadata, tokens),
        source_ip=source_ip(metadata, context.peer() or ""),
        user_agent=metadata.get("user-agent", "")[:USER_AGENT_MAX],
    )
