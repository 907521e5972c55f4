"""Redis for a service: a client opened as a server resource."""

from __future__ import annotations

import redis.asyncio as redis


class Redis:
    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(
            url, decode_responses=False, socket_connect_timeout=2, socket_timeout=2
        )

    async def start(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()
