"""The client's `Idempotency-Key`: the HTTP header, which Envoy passes on as gRPC metadata,
or the same metadata sent straight over gRPC. One key per call, 1 to 255 characters.

A service stores the key, scoped to its RPC, with a hash of the request in the same
transaction as the effect; a retry with the same key and request replays the first answer,
and the same key with a different request is `IdempotencyKeyReused`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.framework import call
from services.framework.config import integer
from services.framework.errors import Aborted, FailedPrecondition, FieldViolation, InvalidArgument
from services.framework.interceptors import http_rules
from services.framework.topology import ServiceSpec

log = logging.getLogger("interpay.idempotency")

HEADER = "idempotency-key"


@dataclass(frozen=True)
class IdempotencyKey:
    """A creating call's Idempotency-Key, scoped to its RPC, with a hash of the request so
    that the same key with a different request is refused rather than replayed."""

    rpc: str
    key: str
    request_hash: bytes


class IdempotencyKeyReused(FailedPrecondition):
    default_reason = "IDEMPOTENCY_MISMATCH"

    def __init__(self, key: IdempotencyKey) -> None:
        super().__init__(
            f"Idempotency-Key {key.key!r} was already used for a different {key.rpc} request",
            metadata={"idempotency_key": key.key, "rpc": key.rpc},
        )


def header(context: Any) -> str | None:
    """The key the client sent, if any; a malformed or repeated one is INVALID_ARGUMENT."""
    values = [v for k, v in context.invocation_metadata() or () if k == HEADER]
    if not values:
        return None
    key = str(values[-1])
    if not 1 <= len(key) <= 255 or not key.isprintable() or len(set(values)) > 1:
        raise InvalidArgument(
            "invalid request: Idempotency-Key must be one value of 1 to 255 printable characters",
            field_violations=[
                FieldViolation("Idempotency-Key", "must be one value of 1 to 255 printable characters")
            ],
        )
    return key


def for_request(context: Any, rpc: str, request: Message) -> IdempotencyKey | None:
    """The call's key scoped to `rpc`, with the request's hash; None without a key."""
    key = header(context)
    if key is None:
        return None
    return IdempotencyKey(rpc, key, hashlib.sha256(request.SerializeToString(deterministic=True)).digest())


# -- the framework's Idempotency-Key for every other mutating public RPC -----------------
# RPCs that keep their key in their own database, in the transaction of their effect (the
# source of truth for what they create): the framework leaves their key to them.
OWN_KEYS = frozenset(
    {
        "interpay.payments.v1.PaymentService/CreatePayment",
        "interpay.payments.v1.PaymentService/RefundPayment",
        "interpay.vault.v1.VaultService/TokenizeCard",
        "interpay.merchants.v1.MerchantsService/CreateMerchant",
        "interpay.merchants.v1.MerchantsService/CreateApiKey",
        "interpay.merchants.v1.MerchantsService/RotateApiKey",
        "interpay.merchants.v1.MerchantsService/CreateWebhookEndpoint",
        "interpay.fraud.v1.FraudService/CreateFraudRule",
        "interpay.fraud.v1.FraudService/AddBlacklistEntry",
        # Idempotent on the client's own transfer or payout id (the request's key).
        "interpay.transfers.v1.TransfersService/CreateTransfer",
        "interpay.transfers.v1.TransfersService/CreatePayout",
    }
)
# RPCs whose answer is a credential: it is never stored, so a retry authenticates again.
NEVER_REPLAYED = frozenset(
    {
        "interpay.users.v1.UserService/Login",
        "interpay.users.v1.UserService/RefreshSession",
    }
)
_MUTATING_VERBS = ("post", "put", "patch", "delete")


def mutating_rpcs(spec: ServiceSpec) -> frozenset[str]:
    """The RPCs of a service's contract whose HTTP rule changes something (POST, PUT,
    PATCH, DELETE), less those with their own key and those never replayed."""
    return frozenset(
        name
        for name, rule in http_rules(spec).items()
        if rule.WhichOneof("pattern") in _MUTATING_VERBS
        and f"{spec.grpc_service}/{name}" not in OWN_KEYS | NEVER_REPLAYED
    )


class RequestInProgress(Aborted):
    default_reason = "REQUEST_IN_PROGRESS"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"a request with Idempotency-Key {key!r} is still running; retry it later",
            metadata={"idempotency_key": key},
        )


class IdempotencyInterceptor(grpc.aio.ServerInterceptor):
    """The Idempotency-Key of every mutating public RPC that does not keep its own
    (`mutating_rpcs`), in Redis:

    - the first request with a key claims it (`SET NX`, a lease of
      `INTERPAY_IDEMPOTENCY_LEASE_SECONDS`, 60) and runs; its successful answer is stored
      for `INTERPAY_IDEMPOTENCY_TTL_SECONDS` (24 h) and replayed, byte for byte, to every
      retry with the same key and the same request;
    - a retry while the first is still running is ABORTED / REQUEST_IN_PROGRESS (HTTP
      409): retry later, it never runs twice at once;
    - the same key with a different request is FAILED_PRECONDITION / IDEMPOTENCY_MISMATCH;
    - a refusal (any error) releases the key, so a corrected retry can run.

    Keys are scoped to the RPC and to the caller (one merchant's key never meets
    another's). Most of these RPCs' effects are idempotent by themselves (they reach a
    state, or a natural unique key holds: a unique email, one wallet per owner and
    currency, a funding reference, one settlement per merchant and day): the key adds the
    replay of the first answer and the guard against running twice at once. So if Redis
    is down, or loses a key, the request still runs (logged) and cannot double such an
    effect; at worst a retry gets the answer of a repeat (e.g. ALREADY_EXISTS) instead of
    a replay. The few that add a row each time (a KYC document, one more webhook attempt)
    would add one more in that case.
    """

    def __init__(self, spec: ServiceSpec, redis: Redis) -> None:
        self.prefix = f"/{spec.grpc_service}/"
        self.grpc_service = spec.grpc_service
        self.mutating = mutating_rpcs(spec)
        self.redis = redis
        self.lease_ms = integer("INTERPAY_IDEMPOTENCY_LEASE_SECONDS", 60) * 1000
        self.ttl_ms = integer("INTERPAY_IDEMPOTENCY_TTL_SECONDS", 24 * 3600) * 1000

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        rpc = method.removeprefix(self.prefix)
        if handler is None or handler.unary_unary is None or rpc not in self.mutating:
            return handler
        inner = handler.unary_unary
        reply_class = message_factory.GetMessageClass(
            descriptor_pool.Default().FindMethodByName(f"{self.grpc_service}.{rpc}").output_type
        )

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            key = for_request(context, rpc, request)
            if key is None:
                return await inner(request, context)
            served = call.current()
            redis_key = "idempotency:{}:{}:{}".format(
                rpc,
                served.actor if served is not None else "",
                hashlib.sha256(key.key.encode()).hexdigest(),
            )
            try:
                replay = await self._claim(redis_key, key)
            except (RedisError, OSError) as exc:
                log.warning("Idempotency-Key not checked: Redis is unavailable", extra={"error": str(exc)})
                return await inner(request, context)
            if replay is not None:
                return reply_class.FromString(replay)
            try:
                reply = await inner(request, context)
            except BaseException:
                with contextlib.suppress(RedisError, OSError):
                    await self.redis.delete(redis_key)
                raise
            with contextlib.suppress(RedisError, OSError):
                await self.redis.set(
                    redis_key,
                    b"done:" + key.request_hash + reply.SerializeToString(deterministic=True),
                    px=self.ttl_ms,
                )
            return reply

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _claim(self, redis_key: str, key: IdempotencyKey) -> bytes | None:
        """None: the key is ours, run the request. Else the stored answer to replay."""
        if await self.redis.set(redis_key, b"busy:" + key.request_hash, nx=True, px=self.lease_ms):
            return None
        stored = await self.redis.get(redis_key)
        if stored is None:  # expired in between: claim again
            return await self._claim(redis_key, key)
        assert isinstance(stored, bytes)
        state, digest, answer = stored[:5], stored[5:37], stored[37:]
        if digest != key.request_hash:
            raise IdempotencyKeyReused(key)
        if state == b"busy:":
            raise RequestInProgress(key.key)
        return bytes(answer)
