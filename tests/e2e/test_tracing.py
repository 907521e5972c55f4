"""One request, one trace: a W3C traceparent sent to the gateway reaches the transfers
service, the orchestrator running the transfer's saga, and through the saga's peer call
the wallet service; all of them log under that trace id."""

from __future__ import annotations

import secrets
import time
import uuid

import httpx

from tests.conftest import ROOT
from tests.e2e.test_slice_http import fund, open_wallet


def _logged(profile, service: str, trace_id: str) -> bool:  # type: ignore[no-untyped-def]
    log = ROOT / ".data" / profile.name / "logs" / f"{service}.log"
    if service == "envoy":  # the access log records the whole traceparent header
        return f"-{trace_id}-" in log.read_text()
    return f'"trace_id": "{trace_id}"' in log.read_text()


def test_a_trace_follows_the_request_across_envoy_and_services(gateway: httpx.Client, profile) -> None:  # type: ignore[no-untyped-def]
    a, b = open_wallet(gateway, str(uuid.uuid4())), open_wallet(gateway, str(uuid.uuid4()))
    fund(gateway, a["walletId"], 100)
    trace_id = secrets.token_hex(16)
    reply = gateway.post(
        "/v1/transfers",
        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        json={
            "transferId": str(uuid.uuid4()),
            "sourceWalletId": a["walletId"],
            "destinationWalletId": b["walletId"],
            "amount": {"amountMinor": "1", "currency": "EUR"},
        },
    )
    assert reply.status_code == 200, reply.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(
        _logged(profile, service, trace_id) for service in ("transfers", "orchestrator", "wallet", "envoy")
    ):
        time.sleep(0.2)
    assert _logged(profile, "transfers", trace_id), "transfers did not join the trace"
    assert _logged(profile, "orchestrator", trace_id), "the saga did not join the trace"
    assert _logged(profile, "wallet", trace_id), "the peer call did not carry the trace"
    assert _logged(profile, "envoy", trace_id), "the gateway's access log lacks the traceparent"
