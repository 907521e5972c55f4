"""Who is calling and from where, read from the call's metadata.

The source address is the framework's (services/framework/edge_context.py): what the
gateway (or the operator's tooling) says the client's address is, else the gRPC peer; any
other caller's forwarding headers are ignored. The actor is
the user named by a valid access token in `authorization`, else "anonymous": enforcing
who may call what is the edge's job (the security issue); here it is recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jwt

from services.framework.edge_context import client_ip, forwarder
from services.framework.identity import identify as identify_peer
from services.users.adapters.audit import Caller
from services.users.adapters.tokens import TokenIssuer

USER_AGENT_MAX = 512


def _metadata(pairs: Iterable[tuple[str, Any]]) -> dict[str, str]:
    return {k.lower(): v for k, v in pairs if isinstance(v, str)}


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
    pairs = list(context.invocation_metadata() or ())
    metadata = _metadata(pairs)
    return Caller(
        actor=actor(metadata, tokens),
        source_ip=client_ip(pairs, context.peer() or "", forwarder(identify_peer(context))),
        user_agent=metadata.get("user-agent", "")[:USER_AGENT_MAX],
    )
