"""Server interceptors every service runs, outermost first:

1. `RpcInterceptor`: one JSON log line per RPC (method, status, duration, trace id)
   and the error mapping: a `ServiceError` becomes its status with google.rpc details;
   a business error from a peer passes through unchanged; a peer that cannot be reached
   becomes UNAVAILABLE; anything unexpected becomes INTERNAL with only a trace id, its
   traceback going to the log and never to the caller.
2. `AllowlistInterceptor`: an internal RPC (one without an HTTP rule) admits only the
   mTLS identities its allowlist in topology.py names; any other caller is refused with
   PERMISSION_DENIED before the request is even validated.
3. `EdgeAuthInterceptor`: a public RPC (one with an HTTP rule) needs a principal: a user
   JWT or a merchant API key (services/framework/edge_auth.py), or a peer's or the
   operator's mTLS identity; the policy table (services/framework/edge_policy.py) then
   admits it or refuses with PERMISSION_DENIED. The principal is kept for the handlers
   (`edge_auth.current_principal()`), which check ownership of what they read.
4. `ValidationInterceptor`: the protovalidate rules declared in the contract, checked on
   every request before any handler runs; violations are INVALID_ARGUMENT with a
   BadRequest naming each field.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import protovalidate
import psycopg
from buf.validate import validate_pb2
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pool
from grpc_status import rpc_status

from services.framework import call, edge_policy, errors, failpoints
from services.framework.edge_auth import EdgeAuthenticator, reset_principal, set_principal
from services.framework.identity import admit, identify
from services.framework.logs import current_trace_id
from services.framework.request_log import RequestLog
from services.framework.topology import ServiceSpec

log = logging.getLogger("interpay.rpc")

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
# Codes a peer returns for a business refusal; they reach our caller unchanged.
_PASS_THROUGH = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}


def _wrap_unary(
    handler: grpc.RpcMethodHandler | None, wrap: Callable[[Behaviour], Behaviour]
) -> grpc.RpcMethodHandler | None:
    if handler is None or handler.unary_unary is None:
        return handler  # streaming handlers (reflection) pass untouched
    return grpc.unary_unary_rpc_method_handler(
        wrap(handler.unary_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def abort(context: grpc.aio.ServicerContext, status: Any) -> None:
    s = rpc_status.to_status(status)
    await context.abort(s.code, s.details, s.trailing_metadata)


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """The outermost of a service's interceptors: marks the call being served
    (services/framework/call.py), turns errors into statuses with details, logs every
    RPC, and hands each answered public RPC (`public`) to the request log."""

    def __init__(
        self, service: str, request_log: RequestLog | None = None, public: frozenset[str] = frozenset()
    ) -> None:
        self.service = service
        self.domain = f"{service}.interpay.dev"
        self.request_log = request_log
        self.public = public
        # The handler of each method, wrapped by this and every interceptor after it. Each
        # of them wraps by the method's name alone (per-call data is read inside the
        # wrappers), so the chain is built once per method rather than on every call.
        self._built: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        method = handler_call_details.method
        built = self._built.get(method)
        if built is None:
            built = await self._build(continuation, handler_call_details)
            if built is not None:  # an unknown method is never remembered
                self._built[method] = built
        return built

    async def _build(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        method = handler_call_details.method
        rpc_name = method.rsplit("/", 1)[-1]
        handler = await continuation(handler_call_details)

        def wrap(inner: Behaviour) -> Behaviour:
            async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                code = grpc.StatusCode.OK
                served, token = call.serving(context)
                try:
                    failpoints.hit(f"{self.service}.{rpc_name}.before")
                    reply = await inner(request, context)
                    failpoints.hit(f"{self.service}.{rpc_name}.after")  # done, not yet answered
                    return reply
                except errors.ServiceError as exc:
                    code = exc.code
                    await abort(context, exc.to_status(self.domain))
                except grpc.aio.AioRpcError as exc:  # a peer call failed
                    code = await self._peer_failure(context, method, exc)
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                    raise
                except psycopg.OperationalError as exc:  # the database went away mid-request
                    code = grpc.StatusCode.UNAVAILABLE
                    log.warning("database unavailable", extra={"rpc": method, "error": str(exc)[:200]})
                    await abort(
                        context,
                        errors.Unavailable(
                            "the service's database is unavailable; retry later",
                            metadata={"dependency": "postgresql"},
                        ).to_status(self.domain),
                    )
                except Exception:
                    code = grpc.StatusCode.INTERNAL
                    trace_id = current_trace_id()
                    log.exception("unhandled error", extra={"rpc": method})
                    await abort(
                        context,
                        errors.build_status(
                            code,
                            f"internal error; quote trace id {trace_id} to support",
                            [
                                errors.error_details_pb2.ErrorInfo(
                                    reason="INTERNAL", domain=self.domain, metadata={"trace_id": trace_id}
                                ),
                            ],
                        ),
                    )
                finally:
                    call.done(token)
                    if method.startswith("/interpay."):
                        duration_ms = round((time.perf_counter() - started) * 1000, 2)
                        log.info("rpc", extra={"rpc": method, "code": code.name, "duration_ms": duration_ms})
                        if self.request_log is not None and rpc_name in self.public:
                            self.request_log.add(
                                method, served.actor, code.name, duration_ms, current_trace_id()
                            )
                return None  # unreachable: abort raises

            return behaviour

        return _wrap_unary(handler, wrap)

    async def _peer_failure(
        self, context: grpc.aio.ServicerContext, method: str, exc: grpc.aio.AioRpcError
    ) -> grpc.StatusCode:
        code = exc.code()
        if code in _PASS_THROUGH:
            status = rpc_status.from_call(exc)
            if status is None:
                status = errors.build_status(code, exc.details() or code.name, [])
            await abort(context, status)
        log.warning(
            "peer call failed", extra={"rpc": method, "peer_code": code.name, "peer_details": exc.details()}
        )
        await abort(
            context,
            errors.Unavailable(
                "a service this request depends on is unavailable; retry later",
                metadata={"peer_code": code.name},
            ).to_status(self.domain),
        )
        return grpc.StatusCode.UNAVAILABLE


class AllowlistInterceptor(grpc.aio.ServerInterceptor):
    """Enforces `ServiceSpec.internal_callers`. With `require_identity` (mTLS), a caller
    without a verified identity is refused too; without it (INTERPAY_PLAINTEXT=1) such a
    caller is admitted, as `unverified:<address>` in whatever it does."""

    def __init__(self, spec: ServiceSpec, require_identity: bool) -> None:
        self.prefix = f"/{spec.grpc_service}/"
        self.allowlist = spec.internal_callers
        self.require_identity = require_identity

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        rpc = method.removeprefix(self.prefix)
        if not method.startswith(self.prefix) or rpc not in self.allowlist:
            return handler  # public RPCs, health and reflection
        allowed = self.allowlist[rpc]

        def wrap(inner: Behaviour) -> Behaviour:
            async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
                admit(identify(context), rpc, allowed, self.require_identity)
                return await inner(request, context)

            return behaviour

        return _wrap_unary(handler, wrap)


def http_rules(spec: ServiceSpec) -> dict[str, http_pb2.HttpRule]:
    """The `google.api.http` rule of each RPC of a service's contract that has one."""
    importlib.import_module(spec.proto_module)  # registers the descriptors
    service = descriptor_pool.Default().FindServiceByName(spec.grpc_service)
    return {
        m.name: m.GetOptions().Extensions[annotations_pb2.http]
        for m in service.methods
        if m.GetOptions().HasExtension(annotations_pb2.http)
    }


def public_rpcs(spec: ServiceSpec) -> frozenset[str]:
    """The RPCs of a service's contract that carry a `google.api.http` rule."""
    return frozenset(http_rules(spec))


class EdgeAuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates and authorises every public RPC; internal RPCs, health and
    reflection pass (the allowlist guards the first)."""

    def __init__(self, spec: ServiceSpec, authenticator: EdgeAuthenticator) -> None:
        self.grpc_service = spec.grpc_service
        self.prefix = f"/{spec.grpc_service}/"
        self.public = public_rpcs(spec)
        self.authenticator = authenticator

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        rpc = method.removeprefix(self.prefix)
        if not method.startswith(self.prefix) or rpc not in self.public:
            return handler
        if edge_policy.rule(self.grpc_service, rpc).open:
            return handler

        def wrap(inner: Behaviour) -> Behaviour:
            async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
                principal = await self.authenticator.principal(
                    context.invocation_metadata() or (), identify(context)
                )
                edge_policy.authorize(self.grpc_service, rpc, principal, request)
                call.note_principal(principal)
                token = set_principal(principal)
                try:
                    return await inner(request, context)
                finally:
                    reset_principal(token)

            return behaviour

        return _wrap_unary(handler, wrap)


def _field_path(violation: validate_pb2.Violation) -> str:
    parts = []
    for element in violation.field.elements:
        part = element.field_name
        if element.HasField("index"):
            part += f"[{element.index}]"
        elif element.HasField("string_key"):
            part += f"[{element.string_key!r}]"
        parts.append(part)
    return ".".join(parts)


class ValidationInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)

        def wrap(inner: Behaviour) -> Behaviour:
            async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
                violations = protovalidate.collect_violations(request)
                if violations:
                    # protovalidate hands back its own runtime's messages; read them through
                    # our generated copy of the same schema.
                    parsed = [validate_pb2.Violation.FromString(v.proto.to_binary()) for v in violations]
                    field_violations = [errors.FieldViolation(_field_path(v), v.message) for v in parsed]
                    summary = "; ".join(
                        f"{fv.field or 'request'}: {fv.description}" for fv in field_violations
                    )
                    raise errors.InvalidArgument(
                        f"invalid request: {summary}", field_violations=field_violations
                    )
                return await inner(request, context)

            return behaviour

        return _wrap_unary(handler, wrap)
