"""Cassandra for a service: the platform's one client of the `interpay_logs` keyspace.

What every service that writes logs, sessions or time series to Cassandra needs, once:

- **Lazy connection.** `start()` only begins connecting in the background; the first
  statement waits for that attempt (or makes a new one). A service therefore starts, and
  serves everything that does not need Cassandra, while Cassandra is down or still
  booting; a statement run while it is unreachable raises `CassandraUnavailable` at once
  (a failed attempt is not retried for `retry_connect_after` seconds, so an outage costs
  callers no connect timeout each). Once connected, the driver reconnects by itself.
- **Named prepared statements, registered up front.** The client is built with every
  statement it may run (`{"OPEN_SESSION": "INSERT ..."}`), all prepared at connection;
  callers run them by name with positional values. A statement that does not prepare
  (a table the schema has not created yet) fails the connection attempt, which is
  retried later, rather than failing one call in a hundred.
- **Configuration** from the environment (`CassandraSettings.from_env`):
  `INTERPAY_CASSANDRA_HOSTS` (comma-separated contact points, default 127.0.0.1),
  `INTERPAY_CASSANDRA_PORT` (9042), `INTERPAY_CASSANDRA_CONSISTENCY` (LOCAL_QUORUM: one
  replica locally, where the keyspace has one, a majority of the local data centre's
  three in production), `INTERPAY_CASSANDRA_SERIAL_CONSISTENCY` (SERIAL, for lightweight
  transactions; LOCAL_SERIAL when a row is only ever written from one data centre),
  `INTERPAY_CASSANDRA_LOCAL_DC` (optional; the driver infers it from the contact points),
  `INTERPAY_CASSANDRA_PROTOCOL_VERSION` (5; statements name their keyspace through it),
  `INTERPAY_CASSANDRA_REQUEST_TIMEOUT_MS` (5000) and `INTERPAY_CASSANDRA_CONNECT_TIMEOUT_MS`
  (5000).
- **asyncio API over the blocking driver.** Each statement is sent with the driver's
  `execute_async`; its `ResponseFuture` callbacks (run on the driver's I/O thread) resolve
  an asyncio future through `loop.call_soon_threadsafe`, following result pages. No
  thread per call; only connecting and shutting down, which block, run in a thread.

The API (rows are dicts, column name -> value):

    client = Cassandra({"LOG": "INSERT INTO api_request_logs (...) VALUES (?, ...) USING TTL ?",
                        "BY_BUCKET": "SELECT ... FROM api_request_logs WHERE service = ? AND bucket = ?"})
    rows = await client.execute("BY_BUCKET", (service, bucket))
    await client.execute_concurrently([("LOG", row_1), ("LOG", row_2)])
    outcome = await client.execute_conditional("CLAIM", (...))   # a lightweight transaction
    if not outcome.applied: ...outcome.current...                  # the row as Paxos saw it
    ttl = ttl_seconds((expires_at - now).total_seconds())         # a `USING TTL ?` value

`execute_concurrently` sends independent statements at once and waits for all of them:
the way to write many rows to many partitions. It is deliberately not a batch: a logged
batch across partitions costs a batch-log round trip and buys atomicity that idempotent
writes do not need; what failed raises after every statement has finished, and the caller
retries the whole list (so every statement given to it must be idempotent, as inserts with
derived keys and absolute values are).

`execute_conditional` runs a statement with an `IF` clause (`IF NOT EXISTS`, `IF col = ?`):
Paxos at the serial consistency, so of two conflicting conditional writes exactly one
applies. Rows written with lightweight transactions should only ever be written with
lightweight transactions (Paxos ballots and client timestamps do not order each other).

**Failures.** A Cassandra that cannot be reached, has too few replicas alive, or does not
answer in time raises `CassandraUnavailable`: a `services.framework.errors.Unavailable`,
so an RPC that lets it through answers UNAVAILABLE with an ErrorInfo
(`DEPENDENCY_UNAVAILABLE`, metadata `dependency=cassandra`; the statement's name and the
driver's error are on the exception and in the service's log, not in the answer).
`outcome_unknown` is set when a write timed out after reaching a replica: it may still
have been applied (for a conditional write, the Paxos round may complete later).
Anything else the driver raises (an invalid query, a wrong value type) is a bug and
propagates unchanged.

A server resource: `start()` and `close()` as the server calls them (services/framework/
server.py). Metrics: `interpay_cassandra_requests_total{statement, outcome}`; each
statement is an OpenTelemetry client span named `cassandra <statement>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cassandra import (
    ConsistencyLevel,
    CoordinationFailure,
    OperationTimedOut,
    ProtocolVersion,
    ReadTimeout,
    WriteTimeout,
)
from cassandra import Unavailable as ReplicasUnavailable
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
from cassandra.query import PreparedStatement, dict_factory
from opentelemetry import trace
from prometheus_client import Counter

from services.framework import errors
from services.framework.config import ConfigError, integer, optional

log = logging.getLogger("interpay.cassandra")
tracer = trace.get_tracer("interpay.cassandra")

KEYSPACE = "interpay_logs"

REQUESTS = Counter(
    "interpay_cassandra_requests_total",
    "Cassandra statements run, by statement name and outcome (ok, unavailable, error)",
    ["statement", "outcome"],
)

# What the driver raises when Cassandra is unreachable, short of replicas, or slow: the
# request may be retried later. Everything else is a bug in the statement or its values.
_UNAVAILABLE = (
    NoHostAvailable,
    OperationTimedOut,
    ReplicasUnavailable,
    ReadTimeout,
    WriteTimeout,
    CoordinationFailure,  # ReadFailure, WriteFailure: replicas answered with an error
    ConnectionException,
)


class CassandraUnavailable(errors.Unavailable):
    """Cassandra could not be reached or did not answer in time: UNAVAILABLE, reason
    DEPENDENCY_UNAVAILABLE, `dependency=cassandra`. Retry later. `outcome_unknown`: a
    write timed out after reaching a replica and may yet be applied."""

    def __init__(self, statement: str, cause: BaseException | str, *, outcome_unknown: bool = False):
        # For logs and callers; the caller of the RPC sees only that Cassandra is down.
        self.statement = statement
        self.cause = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        self.outcome_unknown = outcome_unknown
        super().__init__(
            "a data store this request needs (Cassandra) is unavailable; retry later",
            metadata={"dependency": "cassandra"},
        )


def _consistency(name: str, default: str) -> int:
    raw = optional(name, default).upper()
    level = ConsistencyLevel.name_to_value.get(raw)
    if level is None:
        raise ConfigError(f"environment variable {name} must name a consistency level, got {raw!r}")
    return int(level)


@dataclass(frozen=True)
class CassandraSettings:
    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9042
    keyspace: str = KEYSPACE
    consistency: int = ConsistencyLevel.LOCAL_QUORUM
    serial_consistency: int = ConsistencyLevel.SERIAL
    local_dc: str | None = None
    # Cassandra 4 and 5 speak v5; pinned so the driver does not probe newer beta versions.
    protocol_version: int = ProtocolVersion.V5
    request_timeout_seconds: float = 5.0
    fetch_size: int = 5000  # rows per page of a read (every page is fetched)
    connect_timeout_seconds: float = 5.0
    # After a failed connection attempt, statements fail at once for this long.
    retry_connect_after_seconds: float = 1.0

    @classmethod
    def from_env(cls, keyspace: str = KEYSPACE) -> CassandraSettings:
        hosts = tuple(
            h.strip() for h in optional("INTERPAY_CASSANDRA_HOSTS", "127.0.0.1").split(",") if h.strip()
        )
        return cls(
            hosts=hosts,
            port=integer("INTERPAY_CASSANDRA_PORT", 9042),
            keyspace=keyspace,
            consistency=_consistency("INTERPAY_CASSANDRA_CONSISTENCY", "LOCAL_QUORUM"),
            serial_consistency=_consistency("INTERPAY_CASSANDRA_SERIAL_CONSISTENCY", "SERIAL"),
            local_dc=optional("INTERPAY_CASSANDRA_LOCAL_DC", "") or None,
            protocol_version=integer("INTERPAY_CASSANDRA_PROTOCOL_VERSION", ProtocolVersion.V5),
            request_timeout_seconds=integer("INTERPAY_CASSANDRA_REQUEST_TIMEOUT_MS", 5000) / 1000,
            connect_timeout_seconds=integer("INTERPAY_CASSANDRA_CONNECT_TIMEOUT_MS", 5000) / 1000,
        )


@dataclass(frozen=True)
class Conditional:
    """The outcome of a lightweight transaction: whether it applied and, when it did not,
    the current values of the columns its condition names (empty: no such row)."""

    applied: bool
    current: dict[str, Any]


def _shut_down_if_connected(attempt: asyncio.Future[tuple[Cluster, Session, Any]]) -> None:
    if not attempt.cancelled() and attempt.exception() is None:
        attempt.result()[0].shutdown()


def ttl_seconds(seconds: float) -> int:
    """A TTL for a row that must live at least `seconds`: whole seconds, rounded up, at
    least 1 (0 would mean "never expires")."""
    return max(1, math.ceil(seconds))


class Cassandra:
    def __init__(self, statements: Mapping[str, str], settings: CassandraSettings | None = None) -> None:
        self.statements = dict(statements)
        self.settings = settings or CassandraSettings.from_env()
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._prepared: dict[str, PreparedStatement] = {}
        self._lock: asyncio.Lock | None = None
        self._failed_at = -math.inf
        self._last_failure = ""
        self._warming: asyncio.Task[None] | None = None

    # -- resource ------------------------------------------------------------------------
    async def start(self) -> None:
        """Begins connecting in the background; never fails (see the module docstring)."""
        self._warming = asyncio.create_task(self._warm(), name="cassandra-connect")

    async def _warm(self) -> None:
        with contextlib.suppress(CassandraUnavailable):
            await self._connected()

    async def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming
        cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    @property
    def connected(self) -> bool:
        return self._session is not None

    # -- statements ----------------------------------------------------------------------
    async def execute(self, name: str, values: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Runs the named statement; returns every row (all pages) as dicts."""
        session = await self._connected(name)
        statement = self._prepared[name]
        with tracer.start_as_current_span(f"cassandra {name}", kind=trace.SpanKind.CLIENT) as span:
            span.set_attribute("db.system", "cassandra")
            span.set_attribute("db.namespace", self.settings.keyspace)
            span.set_attribute("db.operation.name", name)
            try:
                rows = await self._bridge(session.execute_async(statement, values))
            except _UNAVAILABLE as exc:
                REQUESTS.labels(name, "unavailable").inc()
                span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
                log.warning(
                    "cassandra statement failed", extra={"statement": name, "error": type(exc).__name__}
                )
                raise CassandraUnavailable(name, exc, outcome_unknown=isinstance(exc, WriteTimeout)) from exc
            except Exception as exc:
                REQUESTS.labels(name, "error").inc()
                span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
                raise
        REQUESTS.labels(name, "ok").inc()
        return rows

    async def execute_conditional(self, name: str, values: Sequence[Any] = ()) -> Conditional:
        """Runs a statement with an IF clause (a lightweight transaction)."""
        rows = await self.execute(name, values)
        first = dict(rows[0]) if rows else {"[applied]": False}
        applied = bool(first.pop("[applied]"))
        return Conditional(applied, {} if applied else first)

    async def execute_concurrently(
        self, statements: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[list[dict[str, Any]]]:
        """Runs independent statements (typically single-partition writes) at once and
        returns their rows in order; if any failed, raises the first failure after all
        have finished (never a batch: see the module docstring)."""
        if not statements:
            return []
        await self._connected(statements[0][0])
        results = await asyncio.gather(
            *(self.execute(name, values) for name, values in statements), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    # -- connection ----------------------------------------------------------------------
    async def _connected(self, statement: str = "connect") -> Session:
        if self._session is not None:
            return self._session
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._session is not None:
                return self._session
            if time.monotonic() - self._failed_at < self.settings.retry_connect_after_seconds:
                raise CassandraUnavailable(statement, self._last_failure)
            attempt = asyncio.ensure_future(asyncio.to_thread(self._connect))
            try:
                self._cluster, self._session, self._prepared = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                # Closing while connecting: the thread finishes on its own; shut what it opens.
                attempt.add_done_callback(_shut_down_if_connected)
                raise
            except Exception as exc:  # unreachable, or a statement the schema cannot prepare yet
                self._failed_at = time.monotonic()
                self._last_failure = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "cassandra is not available",
                    extra={"hosts": ",".join(self.settings.hosts), "error": self._last_failure},
                )
                raise CassandraUnavailable(statement, exc) from exc
            log.info("connected to cassandra", extra={"hosts": ",".join(self.settings.hosts)})
            return self._session

    def _connect(self) -> tuple[Cluster, Session, dict[str, PreparedStatement]]:
        s = self.settings
        balancing = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=s.local_dc))
        profile = ExecutionProfile(
            load_balancing_policy=balancing,
            consistency_level=s.consistency,
            serial_consistency_level=s.serial_consistency,
            request_timeout=s.request_timeout_seconds,
            row_factory=dict_factory,
        )
        cluster = Cluster(
            list(s.hosts),
            port=s.port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=s.connect_timeout_seconds,
            control_connection_timeout=s.connect_timeout_seconds,
            # The driver's default backs off to 10 minutes; after an outage, come back fast.
            reconnection_policy=ExponentialReconnectionPolicy(base_delay=0.5, max_delay=10.0),
            protocol_version=s.protocol_version,
        )
        try:
            # No `USE <keyspace>` on the session (Cassandra 5 warns about it with prepared
            # statements): protocol v5 carries the keyspace with each prepared statement.
            session = cluster.connect()
            session.default_fetch_size = s.fetch_size
            prepared = {
                name: session.prepare(cql, keyspace=s.keyspace) for name, cql in self.statements.items()
            }
        except BaseException:
            cluster.shutdown()
            raise
        return cluster, session, prepared

    @staticmethod
    async def _bridge(future: ResponseFuture) -> list[dict[str, Any]]:
        """The ResponseFuture's rows, every page, delivered to this event loop."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[dict[str, Any]]] = loop.create_future()
        rows: list[dict[str, Any]] = []

        def settle(outcome: list[dict[str, Any]] | BaseException) -> None:
            if done.done():
                return  # the caller gave up (cancelled)
            if isinstance(outcome, BaseException):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)

        def on_page(page: list[dict[str, Any]]) -> None:
            rows.extend(page or ())
            if future.has_more_pages:
                future.start_fetching_next_page()
            else:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(settle, rows)

        def on_error(exc: BaseException) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, exc)

        future.add_callbacks(on_page, on_error)
        return await done
