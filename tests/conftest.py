"""Shared fixtures: where the test mesh is (profile `test`, started by scripts/test.sh),
mTLS channels to its services, an HTTP client for its Envoy gateway, and ids that never
collide between tests.

`gateway` acts as an operator (an admin-role token, `helpers.operator_headers`), so tests
of other behaviour pass the edge's authentication; tests of that authentication
(tests/e2e/test_edge_auth.py) bring users' tokens and merchants' API keys of their own.

`channel(service)` presents the `operator` certificate, as an engineer with grpcurl would;
`channel(service, "orchestrator")` presents a service's own, for the internal RPCs whose
allowlist names that service."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from cassandra.cluster import Cluster, Session

from services.framework.topology import OPERATOR, PROFILES, Profile
from tests.helpers import operator_headers, service_channel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def profile() -> Profile:
    return PROFILES[os.environ.get("INTERPAY_PROFILE", "test")]


@pytest.fixture(scope="session")
def mesh_secrets(profile: Profile) -> dict[str, str]:
    return json.loads((ROOT / ".data" / profile.name / "secrets.json").read_text())


@pytest.fixture(scope="session")
def channel(profile: Profile) -> Iterator[object]:
    channels: dict[tuple[str, str], grpc.Channel] = {}

    def get(service: str, identity: str = OPERATOR) -> grpc.Channel:
        if (service, identity) not in channels:
            channels[service, identity] = service_channel(profile, service, identity)
        return channels[service, identity]

    yield get
    for ch in channels.values():
        ch.close()


@pytest.fixture(scope="session")
def gateway(profile: Profile) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{profile.gateway_port}", timeout=30, headers=operator_headers(profile)
    ) as client:
        yield client


@pytest.fixture
def new_id() -> object:
    return lambda: str(uuid.uuid4())


def database_url(profile: Profile, secrets: dict[str, str], service: str) -> str:
    return (
        f"postgresql://interpay_{service}:{secrets[service]}@127.0.0.1:"
        f"{profile.postgres_port}/interpay_{service}"
    )


@pytest.fixture(scope="session")
def cassandra(profile: Profile) -> Iterator[Session]:
    """The mesh's Cassandra, in the `interpay_logs` keyspace."""
    cluster = Cluster(["127.0.0.1"], port=profile.cassandra_port, connect_timeout=10)
    try:
        yield cluster.connect("interpay_logs")
    finally:
        cluster.shutdown()
