"""Who is calling: mTLS identities between services, and the switch that turns them off.

Every process of the mesh holds a certificate naming it with a SPIFFE id,
`spiffe://interpay.local/ns/interpay/sa/<name>`, the shape Istio issues, so the allowlists
in services/framework/topology.py mean the same here and under Istio. Servers require a
client certificate signed by the mesh's CA, and the framework refuses an internal RPC to
any identity its allowlist does not name (`interceptors.AllowlistInterceptor`).

`INTERPAY_PLAINTEXT=1` serves and calls without TLS: a development switch only. Callers
then carry no identity; they are admitted and named `unverified:<peer address>`, so an
audit log shows exactly which calls were not authenticated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.framework.errors import PermissionDenied, Unauthenticated

TRUST_DOMAIN = "interpay.local"
NAMESPACE = "interpay"


def spiffe_id(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{name}"


def dns_name(name: str) -> str:
    """The name a service's certificate is verified against, whatever address reaches it
    (127.0.0.1:<port> locally, <name>:50051 in Kubernetes)."""
    return f"{name}.{NAMESPACE}.svc"


def plaintext() -> bool:
    """Whether the development switch `INTERPAY_PLAINTEXT=1` is on."""
    return os.environ.get("INTERPAY_PLAINTEXT", "").strip() == "1"


@dataclass(frozen=True)
class TlsFiles:
    """One identity's certificate and key, and the CA that every peer's must chain to."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def in_directory(cls, certs: Path, name: str) -> TlsFiles:
        """The layout scripts/certs.py writes: `<name>.pem`, `<name>-key.pem`, `ca.pem`."""
        return cls(certs / f"{name}.pem", certs / f"{name}-key.pem", certs / "ca.pem")

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


def channel_options(service: str) -> list[tuple[str, Any]]:
    """Verify the server as `service` itself, not merely as some holder of a mesh certificate."""
    return [("grpc.ssl_target_name_override", dns_name(service))]


@dataclass(frozen=True)
class Caller:
    name: str  # the calling identity (a service, `gateway`, `operator`), or the peer's address
    verified: bool

    def __str__(self) -> str:
        return self.name if self.verified else f"unverified:{self.name}"


def service_of(identity: str) -> str:
    """The name inside a SPIFFE id, or the first label of a DNS name / common name."""
    if identity.startswith("spiffe://") and "/sa/" in identity:
        return identity.rsplit("/sa/", 1)[1].split("/", 1)[0]
    return identity.split(".", 1)[0]


def identify(context: Any) -> Caller:
    """The caller of the current RPC, from its verified certificate: the SPIFFE URI SAN if
    it has one, else its first identity (a DNS SAN or the common name)."""
    identities = [i.decode() for i in context.peer_identities() or ()]  # None on plaintext
    if identities:
        spiffe = [i for i in identities if i.startswith("spiffe://")]
        return Caller(service_of((spiffe or identities)[0]), verified=True)
    return Caller(context.peer() or "unknown", verified=False)


def admit(caller: Caller, rpc: str, allowed: tuple[str, ...], require_identity: bool) -> None:
    """Refuses `caller` unless the allowlist of internal RPC `rpc` names it. An unverified
    caller (plaintext) is admitted only when no identity is required."""
    if caller.verified and caller.name not in allowed:
        raise PermissionDenied(
            f"{caller.name} may not call {rpc}",
            metadata={"caller": caller.name, "rpc": rpc, "allowed": ",".join(allowed)},
        )
    if not caller.verified and require_identity:
        raise Unauthenticated(
            f"{rpc} needs a caller identified by its mTLS certificate", metadata={"rpc": rpc}
        )
