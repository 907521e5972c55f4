"""Refresh sessions in Cassandra, where the mesh's own users service cannot show it: the
service run in-process (its own composition, services/users/bootstrap.py `compose`, over
the mesh's real PostgreSQL, Redis and Cassandra), once with sessions that live three
seconds, to watch the TTL end them, and once pointed at a Cassandra port where nothing
listens, to see login and refresh refuse with UNAVAILABLE rather than answer wrongly.

(The rotation, reuse, concurrency, logout, revoke-all, export and erasure tests against
the mesh's service are in test_users_service.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
import psycopg
import pytest
from interpay.users.v1 import users_service_pb2 as pb
from interpay.users.v1.users_service_pb2_grpc import UserServiceStub
from psycopg.rows import dict_row

from services.framework.cache import Redis
from services.framework.cassandra import Cassandra, CassandraSettings
from services.framework.config import ServiceConfig
from services.framework.db import Database
from services.framework.identity import channel_options
from services.framework.server import ServiceApp
from services.framework.topology import BY_NAME, EDGE_AUTH_PEERS, Profile
from services.users.adapters import sessions as session_store
from services.users.adapters.tokens import TokenIssuer
from services.users.bootstrap import compose
from services.users.service_layer.identity import SessionLifetime
from tests.conftest import ROOT, database_url
from tests.helpers import rpc_details, tls_files

PASSWORD = "correct horse battery staple"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # released on close: nothing listens there


@pytest.fixture(scope="module")
def db(profile: Profile, mesh_secrets: dict[str, str]) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(
        database_url(profile, mesh_secrets, "users"), autocommit=True, row_factory=dict_row
    ) as conn:
        yield conn


@asynccontextmanager
async def users_service(
    profile: Profile, secrets: dict[str, str], cassandra_port: int, lifetime: SessionLifetime
) -> AsyncIterator[UserServiceStub]:
    """The users service in-process, on a port of its own, reached as the operator."""
    database = Database(database_url(profile, secrets, "users"), None, max_size=2)
    await database.pool.open(wait=True, timeout=30)  # the mesh's service migrated it
    redis = Redis(f"redis://127.0.0.1:{profile.redis_port}/0")
    cassandra = Cassandra(
        session_store.STATEMENTS,
        CassandraSettings(port=cassandra_port, connect_timeout_seconds=2, request_timeout_seconds=5),
    )
    tokens = TokenIssuer.from_file(str(ROOT / ".data" / profile.name / "jwt-signing-key.pem"))
    servicer, _ = compose(database, redis, cassandra, tokens, lifetime)
    config = ServiceConfig(
        spec=BY_NAME["users"],
        listen_address="127.0.0.1:0",
        database_url="-",
        redis_url=f"redis://127.0.0.1:{profile.redis_port}/0",
        peer_addresses={},
        shutdown_grace_seconds=1,
        db_pool_max=2,
        peer_deadline_seconds=5,
        tls=tls_files(profile, "users"),
        auth_peer_addresses={p: f"127.0.0.1:{profile.service_port(p)}" for p in EDGE_AUTH_PEERS},
    )
    app = ServiceApp(config, servicer, [cassandra])
    await app.start()
    client_tls = tls_files(profile)
    target = f"127.0.0.1:{app.port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if client_tls is None
        else grpc.aio.secure_channel(
            target, client_tls.channel_credentials(), options=channel_options("users")
        )
    )
    try:
        yield UserServiceStub(channel)
    finally:
        await channel.close()
        await app.stop()
        await redis.close()
        await database.close()


async def register(users: UserServiceStub) -> pb.User:
    tag = uuid.uuid4().hex[:12]
    response = await users.RegisterUser(
        pb.RegisterUserRequest(
            email=f"ttl.{tag}@example.org",
            phone=f"+44{int(tag, 16) % 10**10:010d}",
            password=PASSWORD,
            display_name="Tilly",
            country_code="GB",
        )
    )
    return response.user  # type: ignore[no-any-return]


def via() -> tuple[tuple[str, str], ...]:
    return (("x-forwarded-for", f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"),)


async def refused(call: Any, code: grpc.StatusCode, reason: str) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    info, _ = rpc_details(err.value)  # type: ignore[arg-type]
    assert info is not None and info.reason == reason and info.domain == "users.interpay.dev", info
    return info


async def test_a_session_ends_with_its_ttl(profile: Profile, mesh_secrets: dict[str, str]) -> None:
    lifetime = SessionLifetime(idle=timedelta(seconds=3), max_age=timedelta(seconds=4))
    reader = Cassandra(
        {
            "SESSIONS": "SELECT TTL(user_agent) AS ttl FROM user_refresh_sessions WHERE user_id = ?",
            "TOKEN_TTL": "SELECT TTL(session_id) AS ttl FROM user_refresh_tokens WHERE token_hash = ?",
        },
        CassandraSettings(port=profile.cassandra_port),
    )
    async with users_service(profile, mesh_secrets, profile.cassandra_port, lifetime) as users:
        user = await register(users)
        user_id = uuid.UUID(user.user_id)
        session = await users.Login(pb.LoginRequest(email=user.email, password=PASSWORD), metadata=via())
        # Written with the configured lifetimes as TTLs: the session's, and the token's
        # lookup row's (the session's latest possible end).
        (row,) = await reader.execute("SESSIONS", (user_id,))
        assert 0 < row["ttl"] <= 3
        digest = hashlib.sha256(session.refresh_token.encode()).digest()
        (token,) = await reader.execute("TOKEN_TTL", (digest,))
        assert 0 < token["ttl"] <= 4

        deadline = time.monotonic() + 60
        while await reader.execute("SESSIONS", (user_id,)):
            assert time.monotonic() < deadline, "the session row outlived its TTL by a minute"
            await asyncio.sleep(0.25)

        # Gone: the token refreshes nothing, there is nothing to revoke, the export lists none.
        await refused(
            users.RefreshSession(pb.RefreshSessionRequest(refresh_token=session.refresh_token)),
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )
        revoked = await users.RevokeAllSessions(pb.RevokeAllSessionsRequest(user_id=user.user_id))
        assert revoked.revoked_session_count == 0
        export = await users.ExportUserData(pb.ExportUserDataRequest(user_id=user.user_id))
        assert list(export.data_export.sessions) == []
    await reader.close()


async def test_without_cassandra_sessions_are_unavailable_and_access_tokens_still_work(
    profile: Profile,
    mesh_secrets: dict[str, str],
    channel: Any,
    db: psycopg.Connection[dict[str, Any]],
) -> None:
    # A user with a session and an access token from the mesh's service (Cassandra up).
    mesh_users = UserServiceStub(channel("users"))
    tag = uuid.uuid4().hex[:12]
    user = mesh_users.RegisterUser(
        pb.RegisterUserRequest(
            email=f"down.{tag}@example.org",
            phone=f"+44{int(tag, 16) % 10**10:010d}",
            password=PASSWORD,
            display_name="Dana",
            country_code="GB",
        )
    ).user
    other = str(uuid.uuid4())
    session = mesh_users.Login(pb.LoginRequest(email=user.email, password=PASSWORD), metadata=via())
    actions_before = [
        r["action"]
        for r in db.execute("SELECT action FROM audit_log WHERE subject_id = %s", (user.user_id,)).fetchall()
    ]

    async with users_service(profile, mesh_secrets, closed_port(), SessionLifetime()) as users:
        unavailable = grpc.StatusCode.UNAVAILABLE
        for call in (
            users.Login(pb.LoginRequest(email=user.email, password=PASSWORD), metadata=via()),
            users.RefreshSession(pb.RefreshSessionRequest(refresh_token=session.refresh_token)),
            users.Logout(pb.LogoutRequest(refresh_token=session.refresh_token)),
            users.RevokeAllSessions(pb.RevokeAllSessionsRequest(user_id=user.user_id)),
            users.ExportUserData(pb.ExportUserDataRequest(user_id=user.user_id)),
        ):
            info = await refused(call, unavailable, "DEPENDENCY_UNAVAILABLE")
            assert info.metadata["dependency"] == "cassandra"

        # The user's access token is verified without any session lookup: it keeps working
        # (for that user only) until it expires.
        bearer = (("authorization", f"Bearer {session.access_token}"),)
        got = await users.GetUser(pb.GetUserRequest(user_id=user.user_id), metadata=bearer)
        assert got.user.email == user.email
        await refused(
            users.GetUser(pb.GetUserRequest(user_id=other), metadata=bearer),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        )

    # Nothing was half-done: no session opened or revoked, no audit row, and the session
    # still refreshes once Cassandra is back (the mesh's service).
    actions_after = [
        r["action"]
        for r in db.execute("SELECT action FROM audit_log WHERE subject_id = %s", (user.user_id,)).fetchall()
    ]
    assert actions_after == actions_before
    assert mesh_users.RefreshSession(
        pb.RefreshSessionRequest(refresh_token=session.refresh_token)
    ).refresh_token
