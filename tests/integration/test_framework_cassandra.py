"""The framework's Cassandra client (services/framework/cassandra.py) against the mesh's
real Cassandra: named prepared statements, every page of a read, independent writes sent
at once, lightweight transactions, and a clear UNAVAILABLE when Cassandra is not there."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.rpc import error_details_pb2

from services.framework.cassandra import Cassandra, CassandraSettings, CassandraUnavailable
from services.framework.topology import Profile

STATEMENTS = {
    "LOG": (
        "INSERT INTO api_request_logs (service, bucket, request_time, request_id, method, caller, "
        "status_code, duration_ms, trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
    ),
    "LOG_ONCE": (
        "INSERT INTO api_request_logs (service, bucket, request_time, request_id, method, caller, "
        "status_code, duration_ms, trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?"
    ),
    "HOUR": "SELECT request_time, status_code FROM api_request_logs WHERE service = ? AND bucket = ?",
}
HOUR = "2020-01-01-00"
AT = datetime(2020, 1, 1, tzinfo=UTC)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def client(profile: Profile) -> AsyncIterator[Cassandra]:
    # Pages of 10 rows, so a read of 25 needs three.
    cassandra = Cassandra(STATEMENTS, CassandraSettings(port=profile.cassandra_port, fetch_size=10))
    await cassandra.start()
    yield cassandra
    await cassandra.close()


def log_row(service: str, seconds: int, status: str = "OK") -> tuple[object, ...]:
    return (
        service,
        HOUR,
        AT + timedelta(seconds=seconds),
        uuid.uuid4(),
        "/x/Y",
        "test",
        status,
        1.5,
        "",
        600,
    )


async def test_concurrent_writes_and_every_page_of_a_read(client: Cassandra) -> None:
    service = f"test-{uuid.uuid4()}"
    await client.execute_concurrently([("LOG", log_row(service, s)) for s in range(25)])
    rows = await client.execute("HOUR", (service, HOUR))
    # All 25, from three pages, newest first (the table's clustering order), as dicts.
    assert [r["request_time"].replace(tzinfo=UTC) for r in rows] == [
        AT + timedelta(seconds=s) for s in reversed(range(25))
    ]
    assert client.connected


async def test_a_conditional_write_applies_once_and_shows_what_won(client: Cassandra) -> None:
    service = f"test-{uuid.uuid4()}"
    first = log_row(service, 1, "OK")
    again = (*first[:6], "INTERNAL", *first[7:])
    applied = await client.execute_conditional("LOG_ONCE", first)
    assert applied.applied and applied.current == {}
    lost = await client.execute_conditional("LOG_ONCE", again)
    assert not lost.applied and lost.current["status_code"] == "OK"
    assert [r["status_code"] for r in await client.execute("HOUR", (service, HOUR))] == ["OK"]


async def test_an_unreachable_cassandra_is_unavailable_and_does_not_stop_a_start() -> None:
    cassandra = Cassandra(STATEMENTS, CassandraSettings(port=closed_port(), connect_timeout_seconds=2))
    await cassandra.start()  # a service starts all the same
    try:
        for _ in range(2):  # the second fails at once, without a new connection attempt
            with pytest.raises(CassandraUnavailable) as err:
                await cassandra.execute("HOUR", ("any", HOUR))
            status = err.value.to_status("users.interpay.dev")
            assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            assert (info.reason, dict(info.metadata)) == (
                "DEPENDENCY_UNAVAILABLE",
                {"dependency": "cassandra"},
            )
        with pytest.raises(CassandraUnavailable):
            await cassandra.execute_concurrently([("LOG", log_row("any", 1))])
        assert not cassandra.connected
    finally:
        await cassandra.close()


async def test_a_statement_the_schema_cannot_prepare_yet_is_unavailable(profile: Profile) -> None:
    cassandra = Cassandra(
        {"MISSING": "SELECT * FROM no_such_table WHERE k = ?"}, CassandraSettings(port=profile.cassandra_port)
    )
    try:
        with pytest.raises(CassandraUnavailable) as err:
            await cassandra.execute("MISSING", (1,))
        assert "no_such_table" in err.value.cause
    finally:
        await cassandra.close()
