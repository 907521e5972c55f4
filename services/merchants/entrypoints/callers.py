"""Who is calling an internal RPC, and whether the mesh's allowlist admits them.

The caller's identity is its mTLS certificate: a SPIFFE id (`spiffe://<trust
domain>/ns/<namespace>/sa/<service>`, as Istio issues) or a DNS name / common name whose
first label is the service. A verified identity that the allowlist in
services/framework/topology.py does not name is refused with PERMISSION_DENIED.

Until the security issue brings mTLS to the local mesh, peers connect in plaintext and
carry no identity: such a call is admitted, and named `unverified:<peer address>`. The
vault carries the same module; both belong in the framework once every service enforces
its allowlist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.framework.errors import PermissionDenied
from services.framework.topology import BY_NAME


@dataclass(frozen=True)
class Caller:
    name: str  # the calling service, or the peer's address when unverified
    verified: bool

    def __str__(self) -> str:
        return self.name if self.verified else f"unverified:{self.name}"


def service_of(identity: str) -> str:
    if identity.startswith("spiffe://") and "/sa/" in identity:
        return identity.rsplit("/sa/", 1)[1].split("/", 1)[0]
    return identity.split(".", 1)[0]


def identify(context: Any) -> Caller:
    identities = context.peer_identities()  # None on a plaintext connection
    if identities:
        return Caller(service_of(identities[0].decode()), verified=True)
    return Caller(context.peer() or "unknown", verified=False)


def authorize(context: Any, rpc: str) -> Caller:
    """The caller of one of the merchants service's internal RPCs, if the allowlist
    admits it."""
    caller = identify(context)
    allowed = BY_NAME["merchants"].internal_callers[rpc]
    if caller.verified and caller.name not in allowed:
        raise PermissionDenied(
            f"{caller.name} may not call {rpc}",
            metadata={"caller": caller.name, "rpc": rpc, "allowed": ",".join(allowed) or "none"},
        )
    return caller
