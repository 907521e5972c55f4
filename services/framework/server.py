"""The asyncio gRPC server every service runs.

`run(service, build)` is a service's whole `main`: it reads the configuration, lets the
service's composition root build its servicer and resources, serves the contract with
health and reflection over mTLS (a client without a certificate from the mesh's CA is
refused at the handshake), and on SIGTERM/SIGINT reports NOT_SERVING, drains in-flight
RPCs for the grace period and closes its resources.

The handlers are built from the contract's service descriptor, not from the generated
`add_*Servicer_to_server`, so that an RPC the service has not implemented yet answers
UNIMPLEMENTED with a clear message and ErrorInfo, and a servicer method whose name is
not in the contract is a start-up error rather than a silently dead endpoint.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc
import redis.asyncio as redis
import uvloop
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from services.framework import errors, logs, metrics, tracing
from services.framework.config import ServiceConfig, integer
from services.framework.db import Database
from services.framework.edge_auth import EdgeAuthenticator
from services.framework.idempotency import IdempotencyInterceptor
from services.framework.interceptors import (
    AllowlistInterceptor,
    EdgeAuthInterceptor,
    RpcInterceptor,
    ValidationInterceptor,
    public_rpcs,
)
from services.framework.peers import Peers
from services.framework.request_log import RequestLog

log = logging.getLogger("interpay.server")


class Resource(Protocol):
    """Something a service opens before serving and closes after draining."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def _unimplemented(full_method: str) -> Callable[[Any, Any], Awaitable[Any]]:
    async def behaviour(request: Any, context: Any) -> Any:
        raise errors.Unimplemented(
            f"{full_method} is declared in the contract but not implemented yet",
            metadata={"method": full_method},
        )

    return behaviour


def contract_handler(grpc_service: str, proto_module: str, servicer: object) -> grpc.GenericRpcHandler:
    importlib.import_module(proto_module)  # registers the descriptors
    service = descriptor_pool.Default().FindServiceByName(grpc_service)
    rpc_names = {m.name for m in service.methods}
    unknown = {
        name
        for name in dir(servicer)
        if name[:1].isupper() and callable(getattr(servicer, name)) and name not in rpc_names
    }
    if unknown:
        raise RuntimeError(
            f"{type(servicer).__name__} defines {sorted(unknown)}, which {grpc_service} does not declare"
        )
    handlers = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name, None) or _unimplemented(f"{grpc_service}/{method.name}")
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=request_cls.FromString,
            response_serializer=response_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(grpc_service, handlers)


class _ReflectionPool:
    """The default descriptor pool, plus what grpcurl asks for and it cannot answer: the
    file containing a method (`grpcurl describe pkg.Service.Method`)."""

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> Any:  # noqa: N802 - the pool's API
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            found = self._pool.FindServiceByName(service)  # KeyError again if not a method
            if method not in found.methods_by_name:
                raise
            return found.file


class ServiceApp:
    def __init__(self, config: ServiceConfig, servicer: object, resources: Sequence[Resource]):
        self.config = config
        self.servicer = servicer
        self.resources = list(resources)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        # Channels to the users (JWKS) and merchants (API keys) services for edge auth.
        self.auth_peers = Peers(config.auth_peer_addresses, config.peer_deadline_seconds, config.tls)
        # Every answered public RPC, to Cassandra (services/framework/request_log.py).
        self.request_log = RequestLog(config.spec.name)
        # Idempotency-Keys of the mutating public RPCs (services/framework/idempotency.py);
        # connects on first use, so a service starts without Redis.
        self.redis = redis.Redis.from_url(config.redis_url, socket_connect_timeout=1, socket_timeout=1)

    async def start(self) -> None:
        for resource in self.resources:
            await resource.start()
        await self.request_log.start()
        spec = self.config.spec
        require_identity = self.config.tls is not None
        if not require_identity:
            log.warning(
                "INTERPAY_PLAINTEXT=1: public RPCs called without a credential are admitted "
                "as unverified peers; development only"
            )
        server = grpc.aio.server(
            interceptors=[
                aio_server_interceptor(),
                RpcInterceptor(spec.name, self.request_log, public_rpcs(spec)),
                AllowlistInterceptor(spec, require_identity=require_identity),
                EdgeAuthInterceptor(spec, EdgeAuthenticator.over(self.auth_peers, require_identity)),
                ValidationInterceptor(),
                IdempotencyInterceptor(spec, self.redis),
            ],
            options=[("grpc.so_reuseport", 0)],
        )
        server.add_generic_rpc_handlers(
            (contract_handler(spec.grpc_service, spec.proto_module, self.servicer),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                spec.grpc_service,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
            pool=_ReflectionPool(),
        )
        tls = self.config.tls
        if tls is None:
            log.warning("serving without TLS: INTERPAY_PLAINTEXT=1 is for development only")
            self.port = server.add_insecure_port(self.config.listen_address)
        else:
            self.port = server.add_secure_port(self.config.listen_address, tls.server_credentials())
        await server.start()
        self.server = server
        for name in ("", spec.grpc_service):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"address": self.config.listen_address})

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            # New RPCs are refused at once; in-flight ones get the grace period to finish.
            await self.server.stop(self.config.shutdown_grace_seconds)
        for resource in reversed(self.resources):
            await resource.close()
        await self.request_log.close()
        await self.redis.aclose()
        await self.auth_peers.close()
        log.info("stopped")


Build = Callable[[ServiceConfig], Awaitable[tuple[object, Sequence[Resource]]]]


def quiet_garbage_collector() -> None:
    """Once the service is up: what start-up allocated (modules, descriptors, pools) is
    frozen out of the cyclic collector's reach, and young collections run every
    `INTERPAY_GC_GEN0_THRESHOLD` (20,000) net allocations instead of 700. Reference counting
    still frees almost everything at once; the collector only finds cycles, and scanning the
    whole heap for them every few hundred requests was a source of latency spikes."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(integer("INTERPAY_GC_GEN0_THRESHOLD", 20_000), gen1, gen2)


def run(service: str, build: Build) -> None:
    logs.configure(service)
    tracing.configure(service)

    async def main() -> None:
        config = ServiceConfig.from_env(service)
        servicer, resources = await build(config)
        app = ServiceApp(config, servicer, resources)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await app.start()
        quiet_garbage_collector()
        metrics.serve(config.listen_address.rsplit(":", 1)[0], config.metrics_port)
        await stopping.wait()
        log.info("draining")
        await app.stop()

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(main())
    finally:
        tracing.shutdown()


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (libuv's loop: less CPU per socket event than asyncio's own) unless
    `INTERPAY_EVENT_LOOP=asyncio` asks for the standard library's."""
    choice = os.environ.get("INTERPAY_EVENT_LOOP", "uvloop")
    if choice == "asyncio":
        return None
    if choice != "uvloop":
        raise SystemExit(f"INTERPAY_EVENT_LOOP must be uvloop or asyncio, not {choice!r}")
    return uvloop.new_event_loop


def run_contract_only(service: str, migrations: Path | None = None) -> None:
    """Serves a contract whose behaviour has not shipped yet: every RPC answers
    UNIMPLEMENTED with a clear message, while the process already owns its database,
    health, reflection and place in the mesh."""

    class ContractOnly:
        pass

    async def build(config: ServiceConfig) -> tuple[object, Sequence[Resource]]:
        return ContractOnly(), [Database(config.database_url, migrations, config.db_pool_max)]

    run(service, build)
