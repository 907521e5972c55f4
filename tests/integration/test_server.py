"""The shared server, run in-process: it drains in-flight RPCs on shutdown, and an
unexpected exception reaches the caller as INTERNAL with a trace id and nothing else."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from interpay.vault.v1 import vault_service_pb2 as pb
from interpay.vault.v1.vault_service_pb2_grpc import VaultServiceStub

from services.framework import tracing
from services.framework.config import ServiceConfig
from services.framework.server import ServiceApp
from services.framework.topology import BY_NAME
from tests.helpers import rpc_details

TOKEN = "00000000-0000-4000-8000-000000000001"


class SlowAndBrokenVault:
    async def GetCard(self, request: pb.GetCardRequest, context: object) -> pb.GetCardResponse:
        await asyncio.sleep(1.0)
        return pb.GetCardResponse()

    async def DeleteCard(self, request: pb.DeleteCardRequest, context: object) -> pb.DeleteCardResponse:
        raise RuntimeError("connection to postgresql://vault:hunter2@db failed")


@pytest.fixture(scope="module", autouse=True)
def traced() -> None:
    tracing.configure("vault")  # as services.framework.server.run does in a real process


def _app(grace: float) -> ServiceApp:
    config = ServiceConfig(
        spec=BY_NAME["vault"],
        listen_address="127.0.0.1:0",
        database_url="-",
        redis_url="redis://127.0.0.1:1/0",  # none: only Idempotency-Keys would need it
        peer_addresses={},
        shutdown_grace_seconds=grace,
        db_pool_max=1,
        peer_deadline_seconds=1,
    )
    return ServiceApp(config, SlowAndBrokenVault(), resources=[])


async def test_shutdown_drains_in_flight_rpcs_and_refuses_new_ones() -> None:
    app = _app(grace=10)
    await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = VaultServiceStub(ch)
        in_flight = asyncio.ensure_future(stub.GetCard(pb.GetCardRequest(token=TOKEN), timeout=10))
        await asyncio.sleep(0.3)
        stopping = asyncio.ensure_future(app.stop())
        await asyncio.sleep(0.2)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetCard(pb.GetCardRequest(token=TOKEN), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert isinstance(await in_flight, pb.GetCardResponse)  # finished, not cut off
        await stopping


async def test_an_unexpected_exception_is_internal_with_a_trace_id_only() -> None:
    app = _app(grace=1)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await VaultServiceStub(ch).DeleteCard(pb.DeleteCardRequest(token=TOKEN), timeout=5)
    finally:
        await app.stop()
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in err.value.details() and "postgresql" not in err.value.details()
    info, _ = rpc_details(err.value)
    assert info is not None and info.reason == "INTERNAL" and len(info.metadata["trace_id"]) == 32
