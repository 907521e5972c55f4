"""Background jobs a service runs on an interval (hold expiry, reconciliation), started
and stopped with the server like any other resource. A failing run is logged and the
job carries on at the next tick; it never takes the service down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("interpay.periodic")


class Periodic:
    def __init__(self, name: str, interval_seconds: float, run: Callable[[], Awaitable[object]]):
        self.name = name
        self.interval = interval_seconds
        self.run = run
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run()
            except Exception:
                log.exception("periodic job failed", extra={"job": self.name})
