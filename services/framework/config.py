"""Configuration from the environment, failing fast on anything missing or malformed."""

from __future__ import annotations

import os
from dataclasses import dataclass

from services.framework.topology import BY_NAME, ServiceSpec


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
        )
