"""Small helpers the tests share: channels and grpcurl arguments carrying an mTLS
identity, an operator's credential for the gateway, and reading google.rpc details from a
failed call or an HTTP error body."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from scripts.operator_token import mint
from services.framework.identity import TlsFiles, channel_options, plaintext
from services.framework.topology import OPERATOR, Profile

ROOT = Path(__file__).resolve().parent.parent


def certs_dir(profile: Profile) -> Path:
    """Where scripts/certs.py put the profile's CA and certificates."""
    return ROOT / ".data" / profile.name / "certs"


def tls_files(profile: Profile, identity: str = OPERATOR) -> TlsFiles | None:
    """The certificate the tests present as `identity`: `operator` (an engineer) unless a
    test acts as a service; None under INTERPAY_PLAINTEXT=1."""
    return None if plaintext() else TlsFiles.in_directory(certs_dir(profile), identity)


_operator_tokens: dict[str, str] = {}


def operator_headers(profile: Profile) -> dict[str, str]:
    """What a client of the gateway presents to act as an operator: an admin-role token
    signed with the mesh's key (scripts/operator_token.py), minted once per run and valid
    for longer than any run."""
    if profile.name not in _operator_tokens:
        _operator_tokens[profile.name] = mint(profile.name, ttl_seconds=6 * 3600, subject="operator:tests")
    return {"authorization": f"Bearer {_operator_tokens[profile.name]}"}


def service_channel(profile: Profile, service: str, identity: str = OPERATOR) -> grpc.Channel:
    target = f"127.0.0.1:{profile.service_port(service)}"
    tls = tls_files(profile, identity)
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, tls.channel_credentials(), options=channel_options(service))


def service_aio_channel(profile: Profile, service: str, identity: str = OPERATOR) -> grpc.aio.Channel:
    target = f"127.0.0.1:{profile.service_port(service)}"
    tls = tls_files(profile, identity)
    if tls is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=channel_options(service))


def grpcurl_tls(profile: Profile, identity: str = OPERATOR) -> list[str]:
    """grpcurl's flags to reach a service of the mesh as `identity`."""
    tls = tls_files(profile, identity)
    if tls is None:
        return ["-plaintext"]
    return ["-cacert", str(tls.ca), "-cert", str(tls.cert), "-key", str(tls.key)]


def rpc_details(
    exc: grpc.RpcError,
) -> tuple[error_details_pb2.ErrorInfo | None, list[error_details_pb2.BadRequest.FieldViolation]]:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    info, violations = None, []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = list(bad.field_violations)
    return info, violations


def http_details(body: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """(ErrorInfo, the fields named by BadRequest) from a transcoded error body."""
    info, fields = None, []
    for detail in body.get("details", []):
        if detail["@type"].endswith("google.rpc.ErrorInfo"):
            info = detail
        elif detail["@type"].endswith("google.rpc.BadRequest"):
            fields = [v["field"] for v in detail["fieldViolations"]]
    return info, fields


def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """check()'s first truthy value; fails the test if none comes within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
