"""The webhook HTTP client: one POST, no redirects followed, no proxies from the
environment, a hard timeout, the answer reduced to a status code or an error."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from services.notifications.domain.webhooks import RefusedUrl, check_url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a 3xx is an answer (a failed attempt), never a hop to another URL


@dataclass(frozen=True)
class Outcome:
    status: int  # 0 when there was no HTTP answer
    error: str  # empty when delivered
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300


class WebhookClient:
    def __init__(self, timeout_seconds: float, loopback_only: bool) -> None:
        self.timeout = timeout_seconds
        self.loopback_only = loopback_only
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())
        # Its own threads: slow endpoints never hold up the event consumer's Kafka calls,
        # which use the loop's default executor.
        self._pool = ThreadPoolExecutor(max_workers=20, thread_name_prefix="webhooks")

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._post, url, body, headers)

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        started = time.monotonic()

        def done(status: int, error: str) -> Outcome:
            return Outcome(status, error[:500], int((time.monotonic() - started) * 1000))

        try:
            check_url(url, self.loopback_only)
        except RefusedUrl as exc:
            return done(0, f"refused URL: {exc}")
        # check_url allowed http(s) only: no file: or custom scheme reaches urllib.
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read(65536)
                status = int(response.status)
                return done(status, "" if 200 <= status < 300 else f"HTTP {status}")
        except urllib.error.HTTPError as exc:
            return done(exc.code, f"HTTP {exc.code}")
        except TimeoutError:
            return done(0, f"timeout after {self.timeout:g}s")
        except urllib.error.URLError as exc:
            return done(0, f"connection failed: {exc.reason}")
        except OSError as exc:
            return done(0, f"connection failed: {exc}")
