"""What every part of the harness shares: the bench profile's addresses, its secrets, mTLS
channels to its services, a superuser connection to its PostgreSQL, and latency statistics.

The profile is `bench` unless `INTERPAY_BENCH_PROFILE` names another (`bench.run --profile`
sets it): read once at import, so the spawned load generators, which import this module
afresh, aim at the same mesh as their parent."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import psycopg

from services.framework.identity import TlsFiles, channel_options, plaintext
from services.framework.topology import OPERATOR, PROFILES

ROOT = Path(__file__).resolve().parent.parent
PROFILE = PROFILES[os.environ.get("INTERPAY_BENCH_PROFILE", "bench")]
DATA = ROOT / ".data" / PROFILE.name
HOST = "127.0.0.1"  # the harness talks to loopback only
WALLET_ADDR = f"{HOST}:{PROFILE.service_port('wallet')}"
GATEWAY_URL = f"http://{HOST}:{PROFILE.gateway_port}"
GATEWAY_GRPC_ADDR = f"{HOST}:{PROFILE.gateway_port}"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def check_loopback(addr: str) -> str:
    """Every target of the harness is on 127.0.0.1; anything else is a bug."""
    host = addr.split("//", 1)[-1].split(":", 1)[0]
    if host != HOST:
        raise SystemExit(f"refusing to benchmark a non-loopback target: {addr}")
    return addr


def _tls(identity: str) -> TlsFiles | None:
    return None if plaintext() else TlsFiles.in_directory(DATA / "certs", identity)


def service_channel(
    addr: str, service: str, identity: str = OPERATOR, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel straight to `service`, presenting `identity`'s certificate (the mesh is mTLS)."""
    tls = _tls(identity)
    if tls is None:
        return grpc.insecure_channel(check_loopback(addr), options=list(options))
    return grpc.secure_channel(
        check_loopback(addr), tls.channel_credentials(), options=[*options, *channel_options(service)]
    )


def service_aio_channel(
    addr: str, service: str, identity: str = OPERATOR, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    tls = _tls(identity)
    if tls is None:
        return grpc.aio.insecure_channel(check_loopback(addr), options=list(options))
    return grpc.aio.secure_channel(
        check_loopback(addr), tls.channel_credentials(), options=[*options, *channel_options(service)]
    )


def postgres_password() -> str:
    return str(json.loads((DATA / "secrets.json").read_text())["postgres"])


def pg_connect(dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=HOST,
        port=PROFILE.postgres_port,
        user="postgres",
        password=postgres_password(),
        dbname=dbname,
        connect_timeout=10,
        **kwargs,
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int]:
    """p50/p95/p99/mean/max in milliseconds of latencies given in seconds."""
    ordered = sorted(seconds)
    if not ordered:
        return {
            "count": 0,
            "p50_ms": math.nan,
            "p95_ms": math.nan,
            "p99_ms": math.nan,
            "mean_ms": math.nan,
            "max_ms": math.nan,
        }
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p95_ms": round(percentile(ordered, 95) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }
