"""Configuration from the environment, failing fast on anything missing or malformed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from services.framework.identity import TlsFiles, plaintext
from services.framework.topology import BY_NAME, EDGE_AUTH_PEERS, ServiceSpec


class ConfigError(RuntimeError):
    """A required setting is missing or malformed; the process must not start."""


def require(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"environment variable {name} is required")
    return value


def optional(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def integer(name: str, default: int) -> int:
    raw = optional(name, str(default))
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class ServiceConfig:
    """What every service process needs; services read their own extras with `require`."""

    spec: ServiceSpec
    listen_address: str
    database_url: str
    redis_url: str
    peer_addresses: dict[str, str]
    shutdown_grace_seconds: float
    db_pool_max: int
    peer_deadline_seconds: float
    metrics_port: int = 0
    tls: TlsFiles | None = None  # None only under the development switch INTERPAY_PLAINTEXT=1
    # Where the users (JWKS) and merchants (API keys) services are, for edge authentication.
    auth_peer_addresses: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, service: str) -> ServiceConfig:
        spec = BY_NAME[service]
        host = optional("INTERPAY_GRPC_HOST", "127.0.0.1")
        port = integer("INTERPAY_GRPC_PORT", 0)
        if port <= 0:
            raise ConfigError("environment variable INTERPAY_GRPC_PORT is required")
        return cls(
            spec=spec,
            listen_address=f"{host}:{port}",
            database_url=require("INTERPAY_DATABASE_URL"),
            redis_url=require("INTERPAY_REDIS_URL"),
            # e.g. INTERPAY_WALLET_ADDR=127.0.0.1:50052 locally, wallet:50051 in Kubernetes
            peer_addresses={peer: require(f"INTERPAY_{peer.upper()}_ADDR") for peer in spec.peers},
            shutdown_grace_seconds=float(integer("INTERPAY_SHUTDOWN_GRACE_SECONDS", 10)),
            db_pool_max=integer("INTERPAY_DB_POOL_MAX", 10),
            peer_deadline_seconds=float(integer("INTERPAY_PEER_DEADLINE_MS", 5000)) / 1000,
            metrics_port=integer("INTERPAY_METRICS_PORT", 0),
            tls=tls_files(),
            auth_peer_addresses={peer: require(f"INTERPAY_{peer.upper()}_ADDR") for peer in EDGE_AUTH_PEERS},
        )


def tls_files() -> TlsFiles | None:
    """The process's mTLS certificate, key and CA; required unless INTERPAY_PLAINTEXT=1."""
    if plaintext():
        return None
    hint = " (or INTERPAY_PLAINTEXT=1, for development only)"
    paths = {}
    for part in ("cert", "key", "ca"):
        name = f"INTERPAY_TLS_{part.upper()}_FILE"
        raw = os.environ.get(name, "").strip()
        if not raw:
            raise ConfigError(f"environment variable {name} is required{hint}")
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"{name}={path} is not a readable file{hint}")
        paths[part] = path
    return TlsFiles(**paths)
