"""The slice over gRPC with grpcurl, the way an engineer debugs: reflection to discover,
JSON in and out, and errors printed with their google.rpc details."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

from tests.conftest import ROOT
from tests.helpers import grpcurl_tls

GRPCURL = str(ROOT / ".venv" / "bin" / "grpcurl")


def grpcurl(
    profile: Any, service: str, method: str, body: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            GRPCURL,
            *grpcurl_tls(profile),
            "-format-error",
            "-d",
            json.dumps(body),
            f"127.0.0.1:{profile.service_port(service)}",
            method,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def call(profile: Any, service: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
    done = grpcurl(profile, service, method, body)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_register_login_fund_and_pay_with_grpcurl(profile) -> None:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:10]
    user = call(
        profile,
        "users",
        "interpay.users.v1.UserService/RegisterUser",
        {
            "email": f"grpc.{tag}@example.com",
            "phone": f"+1{int(tag, 16) % 10**10:010d}",
            "password": "a long enough password",
            "display_name": "Grace",
            "country_code": "US",
        },
    )["user"]
    login = call(
        profile,
        "users",
        "interpay.users.v1.UserService/Login",
        {"email": f"grpc.{tag}@example.com", "password": "a long enough password"},
    )
    assert login["user_id"] == user["user_id"] and login["access_token"].count(".") == 2

    wallets = [
        call(
            profile,
            "wallet",
            "interpay.wallet.v1.WalletService/CreateWallet",
            {"owner_type": "OWNER_TYPE_USER", "owner_id": owner, "currency": "USD"},
        )["wallet"]
        for owner in (user["user_id"], str(uuid.uuid4()))
    ]
    call(
        profile,
        "wallet",
        "interpay.wallet.v1.WalletService/FundWallet",
        {
            "wallet_id": wallets[0]["wallet_id"],
            "amount": {"amount_minor": 5000, "currency": "USD"},
            "reference": f"deposit-{tag}",
        },
    )
    transfer = call(
        profile,
        "transfers",
        "interpay.transfers.v1.TransfersService/CreateTransfer",
        {
            "transfer_id": str(uuid.uuid4()),
            "source_wallet_id": wallets[0]["wallet_id"],
            "destination_wallet_id": wallets[1]["wallet_id"],
            "amount": {"amount_minor": 1234, "currency": "USD"},
        },
    )["transfer"]
    assert transfer["state"] == "STATE_COMPLETED"
    history = call(
        profile,
        "wallet",
        "interpay.wallet.v1.WalletService/ListWalletTransactions",
        {"wallet_id": wallets[1]["wallet_id"]},
    )
    assert [t["amount"]["amount_minor"] for t in history["transactions"]] == ["1234"]


def test_grpcurl_prints_the_status_and_field_violations(profile) -> None:  # type: ignore[no-untyped-def]
    done = grpcurl(
        profile,
        "wallet",
        "interpay.wallet.v1.WalletService/FundWallet",
        {"wallet_id": "nope", "amount": {"amount_minor": -1, "currency": "USD"}},
    )
    assert done.returncode != 0
    status = json.loads(done.stderr)
    assert status["code"] == 3  # INVALID_ARGUMENT
    bad = next(d for d in status["details"] if d["@type"].endswith("google.rpc.BadRequest"))
    assert [v["field"] for v in bad["field_violations"]] == ["wallet_id", "amount", "reference"]
