"""Webhook signatures, retry schedule and the URL policy: pure functions.

Signature (the scheme the contract and services/notifications/README.md document):

    InterPay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

SIGNATURE_HEADER = "InterPay-Signature"
TOLERANCE_SECONDS = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(header: str, body: bytes, secret: str, now: int, tolerance: int = TOLERANCE_SECONDS) -> bool:
    """What a merchant does with a delivery: the reference implementation of the check."""
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in parts if k.strip() == "t"]
    candidates = [v.strip() for k, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit() or not candidates:
        return False
    t = int(stamps[0])
    if abs(now - t) > tolerance:
        return False
    expected = signature(secret, t, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n failed -> wait base * 2^(n-1), capped,
    times a random factor in [0.5, 1]; give up when the next attempt would fall after the
    round's window (24 h) or the round has had `max_attempts` attempts."""

    base: timedelta
    cap: timedelta
    window: timedelta
    max_attempts: int

    def next_attempt(self, round_started: datetime, round_attempts: int, now: datetime) -> datetime | None:
        if round_attempts >= self.max_attempts:
            return None
        delay = min(self.cap, self.base * (2 ** min(round_attempts - 1, 30)))
        at = now + delay * random.uniform(0.5, 1.0)
        return at if at <= round_started + self.window else None


class RefusedUrl(ValueError):
    """A URL the sender will not post to."""


def check_url(url: str, loopback_only: bool) -> None:
    """http(s) only, no credentials in the URL; plain http only to a loopback address; with
    `loopback_only` (local meshes and tests), nothing but loopback at all."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise RefusedUrl(f"scheme {parts.scheme!r} is not http(s)")
    if parts.username or parts.password:
        raise RefusedUrl("credentials in the URL")
    host = parts.hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not host:
        raise RefusedUrl("no host")
    if parts.scheme == "http" and not loopback:
        raise RefusedUrl("plain http is only allowed to a loopback address")
    if loopback_only and not loopback:
        raise RefusedUrl("this deployment delivers to loopback addresses only")
