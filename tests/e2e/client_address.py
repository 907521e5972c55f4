"""Clients of the gateway with a source address of their own.

The gateway takes a client's address from the TCP connection and overwrites any address
a client writes in its headers (scripts/gateway_config.py), so a test that needs many
distinct clients (per-source login throttling, per-IP fraud velocity) cannot name them
in a header: it connects from another address. Every address in 127.0.0.0/8 is the
loopback interface on Linux, so a client bound to 127.a.b.c reaches the gateway on
127.0.0.1 and Envoy sees 127.a.b.c as its remote address — a genuinely different
client, as a service behind the gateway sees it.
"""

from __future__ import annotations

import random
from typing import Any

import httpx

from services.framework.topology import Profile

# The address Envoy's own connections to the services come from, and that of a client
# which does not bind: the addresses handed out here are never it.
DEFAULT_LOOPBACK = "127.0.0.1"


def loopback_address() -> str:
    """A random address of 127.0.0.0/8 outside 127.0.x.x: about 16 million of them, so
    two tests (or two runs) practically never share one."""
    return f"127.{random.randrange(1, 255)}.{random.randrange(256)}.{random.randrange(1, 255)}"


class SourceClient(httpx.Client):
    """An HTTP client of a profile's gateway whose connections come from `source_address`
    (a fresh loopback address unless one is given)."""

    def __init__(self, profile: Profile, address: str | None = None, **options: Any) -> None:
        self.source_address = address or loopback_address()
        super().__init__(
            base_url=f"http://127.0.0.1:{profile.gateway_port}",
            transport=httpx.HTTPTransport(local_address=self.source_address),
            timeout=30,
            **options,
        )
