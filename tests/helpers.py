"""Small helpers the tests share: reading google.rpc details from a failed call or an
HTTP error body."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


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
