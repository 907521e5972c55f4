"""The API request log: one row per public RPC a service answered, in Cassandra
(`interpay_logs.api_request_logs`, partitioned by service and hour, kept 7 days by the
table's TTL), for analytics and support ("what did merchant X call yesterday, and what
did it get?").

Every service keeps one, through the framework: `RpcInterceptor` hands each answered
public RPC (those with an HTTP route, whether they came through Envoy or straight over
gRPC) to `RequestLog.add`, which only appends to a bounded in-memory queue; a background
task writes the queue to Cassandra every `INTERPAY_REQUEST_LOG_FLUSH_MS` (500 ms), each
row its own single-partition insert (never a batch). A log is not a ledger: nothing waits
for it, and if Cassandra is unreachable the rows wait in the queue (at most
`INTERPAY_REQUEST_LOG_CAPACITY`, 10 000; beyond that the oldest are dropped and counted in
`interpay_request_log_rows_total{outcome="dropped"}`). A row holds the method, the caller
(the edge principal, or the calling service), the status code, the duration and the trace
id: never a request or response body, so never a secret.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter

from services.framework.cassandra import Cassandra, CassandraUnavailable
from services.framework.config import integer

log = logging.getLogger("interpay.request_log")

ROWS = Counter(
    "interpay_request_log_rows_total",
    "API request log rows, by outcome (written, dropped)",
    ["service", "outcome"],
)
INSERT = (
    "INSERT INTO api_request_logs (service, bucket, request_time, request_id, method, caller, "
    "status_code, duration_ms, trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
BY_HOUR = (
    "SELECT request_time, request_id, method, caller, status_code, duration_ms, trace_id, "
    "TTL(method) AS ttl FROM api_request_logs WHERE service = ? AND bucket = ?"
)


def bucket(at: datetime) -> str:
    """The partition of an hour: 'YYYY-MM-DD-HH' in UTC."""
    return at.astimezone(UTC).strftime("%Y-%m-%d-%H")


@dataclass(frozen=True)
class Request:
    at: datetime
    request_id: uuid.UUID
    method: str
    caller: str
    status_code: str
    duration_ms: float
    trace_id: str


class RequestLog:
    """A server resource: `start` begins the writer, `close` flushes what it can."""

    def __init__(self, service: str, cassandra: Cassandra | None = None) -> None:
        self.service = service
        self.cassandra = cassandra or Cassandra({"INSERT": INSERT, "BY_HOUR": BY_HOUR})
        self.capacity = integer("INTERPAY_REQUEST_LOG_CAPACITY", 10_000)
        self.flush_seconds = integer("INTERPAY_REQUEST_LOG_FLUSH_MS", 500) / 1000
        self.batch = 500
        self._queue: collections.deque[Request] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    def add(self, method: str, caller: str, status_code: str, duration_ms: float, trace_id: str) -> None:
        """Queues one answered request; never blocks, never fails."""
        if len(self._queue) >= self.capacity:
            self._queue.popleft()
            ROWS.labels(self.service, "dropped").inc()
        self._queue.append(
            Request(datetime.now(UTC), uuid.uuid4(), method, caller, status_code, duration_ms, trace_id)
        )

    async def start(self) -> None:
        await self.cassandra.start()
        self._task = asyncio.create_task(self._write_forever(), name=f"{self.service}-request-log")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(CassandraUnavailable, asyncio.TimeoutError):
            await asyncio.wait_for(self.flush(), 2)
        await self.cassandra.close()

    async def _write_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                while await self.flush() == self.batch:
                    pass
            except CassandraUnavailable:
                pass  # the rows stay queued; the next round tries again
            except Exception:
                log.exception("writing the request log failed", extra={"service": self.service})

    async def flush(self) -> int:
        """Writes up to one batch of queued rows; returns how many were written. Rows that
        could not be written go back to the front of the queue."""
        taken = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
        if not taken:
            return 0
        try:
            await self.cassandra.execute_concurrently(
                [
                    (
                        "INSERT",
                        (
                            self.service,
                            bucket(r.at),
                            r.at,
                            r.request_id,
                            r.method,
                            r.caller,
                            r.status_code,
                            r.duration_ms,
                            r.trace_id,
                        ),
                    )
                    for r in taken
                ]
            )
        except BaseException:
            self._queue.extendleft(reversed(taken))  # rewriting a row is harmless: same key
            raise
        ROWS.labels(self.service, "written").inc(len(taken))
        return len(taken)
