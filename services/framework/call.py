"""The call a task is serving: set by `RpcInterceptor` around every RPC, so that code deep
inside a use case (the database's audit settings, the request log) can tell who is
calling without each use case passing it down.

`Call.principal` is what edge authentication proved (EdgeAuthInterceptor records it here
as well as in its own context variable, which it resets before the outer interceptor
logs the request)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from services.framework.edge_auth import Principal
from services.framework.identity import Caller, identify


@dataclass
class Call:
    context: Any  # the grpc.aio.ServicerContext
    principal: Principal | None = None
    # What services/framework/audit.py derived for this call's transactions (who, via,
    # from where): computed once per call, forgotten when the principal is learnt.
    audit_settings: tuple[str, str, str, str, str] | None = None

    @property
    def caller(self) -> Caller:
        return identify(self.context)

    @property
    def actor(self) -> str:
        """Who, as the audit trail and the request log name them: 'user:<id>',
        'merchant:<id>', 'operator:<name>', else 'service:<name>' for a verified peer
        ('service:gateway' for an unauthenticated call through Envoy), else
        'unverified:<address>'."""
        if self.principal is not None:
            prefix = f"{self.principal.kind.value}:"
            subject = self.principal.subject
            return subject if subject.startswith(prefix) else prefix + subject
        caller = self.caller
        return f"service:{caller.name}" if caller.verified else f"unverified:{caller.name}"


_current: contextvars.ContextVar[Call | None] = contextvars.ContextVar("call", default=None)


def serving(context: Any) -> tuple[Call, contextvars.Token[Call | None]]:
    call = Call(context)
    return call, _current.set(call)


def done(token: contextvars.Token[Call | None]) -> None:
    _current.reset(token)


def current() -> Call | None:
    return _current.get()


def note_principal(principal: Principal) -> None:
    call = _current.get()
    if call is not None:
        call.principal = principal
        call.audit_settings = None
