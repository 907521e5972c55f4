"""The framework's pure parts: error mapping, page tokens, contract-driven handlers."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from services.framework import errors, paging
from services.framework.server import contract_handler


def test_a_service_error_carries_error_info_and_field_violations() -> None:
    err = errors.InvalidArgument(
        "bad", metadata={"n": 1}, field_violations=[errors.FieldViolation("amount", "must be > 0")]
    )
    status = err.to_status("wallet.interpay.dev")
    assert status.code == code_pb2.INVALID_ARGUMENT
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info) and status.details[1].Unpack(bad)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "INVALID_REQUEST",
        "wallet.interpay.dev",
        {"n": "1"},
    )
    assert [(v.field, v.description) for v in bad.field_violations] == [("amount", "must be > 0")]


def test_page_tokens_round_trip_and_garbage_is_invalid_argument() -> None:
    assert paging.decode(paging.encode(["w", 42])) == ["w", 42]
    assert paging.decode("") is None
    for garbage in ("!!!", "bm90IGpzb24", paging.encode({"k": 1})):  # type: ignore[arg-type]
        with pytest.raises(errors.InvalidArgument):
            paging.decode(garbage)


def test_a_servicer_method_missing_from_the_contract_fails_at_start_up() -> None:
    class Typo:
        async def GetWalet(self, request, context):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(RuntimeError, match="GetWalet"):
        contract_handler("interpay.wallet.v1.WalletService", "interpay.wallet.v1.wallet_service_pb2", Typo())


def test_every_declared_rpc_gets_a_handler() -> None:
    handler = contract_handler(
        "interpay.vault.v1.VaultService", "interpay.vault.v1.vault_service_pb2", object()
    )
    details = type(
        "D", (), {"method": "/interpay.vault.v1.VaultService/TokenizeCard", "invocation_metadata": ()}
    )()
    assert handler.service(details) is not None  # type: ignore[arg-type]
    assert isinstance(handler, grpc.GenericRpcHandler)
