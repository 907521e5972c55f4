"""The first slice over HTTP/JSON through Envoy: users register and log in; wallets are
opened, funded through the system funding account, and pay each other; bad input gets
the right HTTP status with a body naming the field, and changes nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import jwt
import pytest

from tests.helpers import http_details


def register(gateway: httpx.Client, **overrides: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:12]
    body = {
        "email": f"Person.{tag}@Example.com",
        "phone": f"+49{int(tag, 16) % 10**11:011d}",
        "password": "correct horse battery staple",
        "displayName": "Person",
        "countryCode": "DE",
        **overrides,
    }
    reply = gateway.post("/v1/users", json=body)
    assert reply.status_code == 200, reply.text
    return {**reply.json()["user"], "password": body["password"]}


def open_wallet(gateway: httpx.Client, owner_id: str, currency: str = "EUR") -> dict[str, Any]:
    reply = gateway.post(
        "/v1/wallets", json={"ownerType": "OWNER_TYPE_USER", "ownerId": owner_id, "currency": currency}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["wallet"]  # type: ignore[no-any-return]


def fund(gateway: httpx.Client, wallet_id: str, amount: int, currency: str = "EUR") -> dict[str, Any]:
    reply = gateway.post(
        f"/v1/wallets/{wallet_id}:fund",
        json={"amount": {"amountMinor": str(amount), "currency": currency}, "reference": str(uuid.uuid4())},
    )
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


def balance(gateway: httpx.Client, wallet_id: str) -> int:
    reply = gateway.get(f"/v1/wallets/{wallet_id}")
    assert reply.status_code == 200, reply.text
    return int(reply.json()["wallet"]["balance"]["amountMinor"])


def test_register_and_login_issue_a_token_the_jwks_verifies(gateway: httpx.Client) -> None:
    user = register(gateway)
    assert user["state"] == "STATE_ACTIVE" and "password" not in json.dumps(
        gateway.get(f"/v1/users/{user['userId']}").json()
    )
    # Email is case-insensitive for login.
    reply = gateway.post(
        "/v1/auth:login", json={"email": user["email"].lower(), "password": user["password"]}
    )
    assert reply.status_code == 200, reply.text
    session = reply.json()
    assert session["userId"] == user["userId"] and session["tokenType"] == "Bearer"
    jwks = gateway.get("/.well-known/jwks.json").json()["keys"]
    header = jwt.get_unverified_header(session["accessToken"])
    key = next(k for k in jwks if k["kid"] == header["kid"])
    public = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps({k: v for k, v in key.items() if v}))
    claims = jwt.decode(session["accessToken"], public, algorithms=["ES256"], audience="interpay")  # type: ignore[arg-type]
    assert claims["sub"] == user["userId"]


def test_a_duplicate_email_in_other_case_is_409_and_wrong_password_is_401(gateway: httpx.Client) -> None:
    user = register(gateway)
    reply = gateway.post(
        "/v1/users",
        json={
            "email": user["email"].upper(),
            "phone": "+15550000000",
            "password": "x" * 12,
            "displayName": "Twin",
            "countryCode": "US",
        },
    )
    assert reply.status_code == 409
    info, fields = http_details(reply.json())
    assert info is not None and info["reason"] == "EMAIL_TAKEN" and fields == ["email"]
    reply = gateway.post("/v1/auth:login", json={"email": user["email"], "password": "not it at all"})
    assert reply.status_code == 401
    assert http_details(reply.json())[0]["reason"] == "INVALID_CREDENTIALS"  # type: ignore[index]


def test_fund_pay_and_read_history(gateway: httpx.Client) -> None:
    alice, bob = register(gateway), register(gateway)
    a, b = open_wallet(gateway, alice["userId"]), open_wallet(gateway, bob["userId"])
    funded = fund(gateway, a["walletId"], 10_000)
    assert funded["wallet"]["available"] == {"amountMinor": "10000", "currency": "EUR"}

    transfer_id = str(uuid.uuid4())
    body = {
        "transferId": transfer_id,
        "sourceWalletId": a["walletId"],
        "destinationWalletId": b["walletId"],
        "amount": {"amountMinor": "2550", "currency": "EUR"},
        "description": "dinner",
    }
    first = gateway.post("/v1/transfers", json=body)
    assert first.status_code == 200, first.text
    assert first.json()["transfer"]["state"] == "STATE_COMPLETED"
    retry = gateway.post("/v1/transfers", json=body)  # same id: the first result, moved once
    assert retry.json()["transfer"] == first.json()["transfer"]
    assert (balance(gateway, a["walletId"]), balance(gateway, b["walletId"])) == (7450, 2550)
    assert gateway.get(f"/v1/transfers/{transfer_id}").json()["transfer"]["state"] == "STATE_COMPLETED"

    page1 = gateway.get(f"/v1/wallets/{a['walletId']}/transactions", params={"pageSize": 1}).json()
    assert [t["amount"]["amountMinor"] for t in page1["transactions"]] == ["-2550"]  # newest first
    assert page1["transactions"][0]["counterpartyWalletId"] == b["walletId"]
    page2 = gateway.get(
        f"/v1/wallets/{a['walletId']}/transactions",
        params={"pageSize": 1, "pageToken": page1["nextPageToken"]},
    ).json()
    assert [(t["kind"], t["amount"]["amountMinor"]) for t in page2["transactions"]] == [
        ("TRANSACTION_KIND_FUNDING", "10000")
    ]
    assert page2["nextPageToken"] == ""


def test_refusals_change_nothing(gateway: httpx.Client) -> None:
    alice, bob = register(gateway), register(gateway)
    a, b = open_wallet(gateway, alice["userId"]), open_wallet(gateway, bob["userId"])
    fund(gateway, a["walletId"], 1000)
    transfer = {
        "transferId": str(uuid.uuid4()),
        "sourceWalletId": a["walletId"],
        "destinationWalletId": b["walletId"],
        "amount": {"amountMinor": "1001", "currency": "EUR"},
    }
    reply = gateway.post("/v1/transfers", json=transfer)
    assert reply.status_code == 400
    info, _ = http_details(reply.json())
    assert info is not None and info["reason"] == "INSUFFICIENT_FUNDS"
    assert info["metadata"]["available_minor"] == "1000"
    # Retrying the failed transfer replays its refusal; it never half-executes.
    assert gateway.post("/v1/transfers", json=transfer).status_code == 400
    # Reusing a completed transfer's id for another amount names the mismatch.
    ok = {**transfer, "transferId": str(uuid.uuid4()), "amount": {"amountMinor": "100", "currency": "EUR"}}
    assert gateway.post("/v1/transfers", json=ok).status_code == 200
    reply = gateway.post("/v1/transfers", json={**ok, "amount": {"amountMinor": "101", "currency": "EUR"}})
    assert reply.status_code == 400
    info, _ = http_details(reply.json())
    assert info["reason"] == "IDEMPOTENCY_MISMATCH" and info["metadata"]["mismatched_fields"] == "amount"  # type: ignore[index]
    usd = open_wallet(gateway, bob["userId"], "USD")
    reply = gateway.post(
        "/v1/transfers", json={**ok, "transferId": str(uuid.uuid4()), "destinationWalletId": usd["walletId"]}
    )
    assert reply.status_code == 400
    assert http_details(reply.json())[0]["reason"] == "CURRENCY_MISMATCH"  # type: ignore[index]
    assert (
        balance(gateway, a["walletId"]),
        balance(gateway, b["walletId"]),
        balance(gateway, usd["walletId"]),
    ) == (900, 100, 0)


UNKNOWN = "00000000-0000-4000-8000-000000000000"


def _bad_inputs(wallet_id: str) -> list[tuple[str, str, str, Any, int, list[str]]]:
    """(case, method, path, JSON body or raw text, HTTP status, fields named)."""
    money = {"amountMinor": "100", "currency": "EUR"}
    return [
        (
            "register: missing fields",
            "POST",
            "/v1/users",
            {"email": "a@b.co"},
            400,
            ["phone", "password", "display_name", "country_code"],
        ),
        (
            "register: bad email",
            "POST",
            "/v1/users",
            {
                "email": "nope",
                "phone": "+4915100000000",
                "password": "x" * 12,
                "displayName": "X",
                "countryCode": "DE",
            },
            400,
            ["email"],
        ),
        ("register: wrong type", "POST", "/v1/users", {"email": ["a@b.co"]}, 400, []),
        ("register: malformed JSON", "POST", "/v1/users", '{"email": ', 400, []),
        ("login: missing password", "POST", "/v1/auth:login", {"email": "a@b.co"}, 400, ["password"]),
        ("get user: not a uuid", "GET", "/v1/users/42", None, 400, ["user_id"]),
        ("get user: unknown", "GET", f"/v1/users/{UNKNOWN}", None, 404, []),
        (
            "create wallet: system owner",
            "POST",
            "/v1/wallets",
            {"ownerType": "OWNER_TYPE_SYSTEM", "ownerId": UNKNOWN, "currency": "EUR"},
            400,
            ["owner_type"],
        ),
        (
            "create wallet: bad currency",
            "POST",
            "/v1/wallets",
            {"ownerType": "OWNER_TYPE_USER", "ownerId": UNKNOWN, "currency": "euro"},
            400,
            ["currency"],
        ),
        (
            "create wallet: unknown enum",
            "POST",
            "/v1/wallets",
            {"ownerType": "OWNER_TYPE_ALIEN", "ownerId": UNKNOWN, "currency": "EUR"},
            400,
            [],
        ),
        (
            "fund: negative amount",
            "POST",
            f"/v1/wallets/{wallet_id}:fund",
            {"amount": {"amountMinor": "-100", "currency": "EUR"}, "reference": "r"},
            400,
            ["amount"],
        ),
        (
            "fund: zero amount",
            "POST",
            f"/v1/wallets/{wallet_id}:fund",
            {"amount": {"amountMinor": "0", "currency": "EUR"}, "reference": "r"},
            400,
            ["amount"],
        ),
        (
            "fund: amount as text",
            "POST",
            f"/v1/wallets/{wallet_id}:fund",
            {"amount": {"amountMinor": "ten", "currency": "EUR"}, "reference": "r"},
            400,
            [],
        ),
        (
            "fund: fractional amount",
            "POST",
            f"/v1/wallets/{wallet_id}:fund",
            {"amount": {"amountMinor": 10.5, "currency": "EUR"}, "reference": "r"},
            400,
            [],
        ),
        (
            "fund: missing amount and reference",
            "POST",
            f"/v1/wallets/{wallet_id}:fund",
            {},
            400,
            ["amount", "reference"],
        ),
        (
            "fund: unknown wallet",
            "POST",
            f"/v1/wallets/{UNKNOWN}:fund",
            {"amount": money, "reference": "r"},
            404,
            [],
        ),
        ("get wallet: unknown", "GET", f"/v1/wallets/{UNKNOWN}", None, 404, []),
        (
            "history: page too large",
            "GET",
            f"/v1/wallets/{wallet_id}/transactions?pageSize=1000",
            None,
            400,
            ["page_size"],
        ),
        (
            "history: forged page token",
            "GET",
            f"/v1/wallets/{wallet_id}/transactions?pageToken=xyz",
            None,
            400,
            ["page_token"],
        ),
        (
            "transfer: same wallet twice",
            "POST",
            "/v1/transfers",
            {
                "transferId": UNKNOWN,
                "sourceWalletId": wallet_id,
                "destinationWalletId": wallet_id,
                "amount": money,
            },
            400,
            [""],
        ),
        (
            "transfer: not a uuid id",
            "POST",
            "/v1/transfers",
            {
                "transferId": "t-1",
                "sourceWalletId": wallet_id,
                "destinationWalletId": UNKNOWN,
                "amount": money,
            },
            400,
            ["transfer_id"],
        ),
        ("transfer: unknown query parameter", "GET", f"/v1/transfers/{UNKNOWN}?colour=red", None, 400, []),
    ]


@pytest.fixture(scope="module")
def bad_input_wallet(gateway: httpx.Client) -> str:
    wallet = open_wallet(gateway, str(uuid.uuid4()))
    fund(gateway, wallet["walletId"], 500)
    return wallet["walletId"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("index", range(len(_bad_inputs(UNKNOWN))), ids=[c[0] for c in _bad_inputs(UNKNOWN)])
def test_bad_input_gets_a_precise_status_and_changes_nothing(
    gateway: httpx.Client, bad_input_wallet: str, index: int
) -> None:
    _, method, path, body, status, fields = _bad_inputs(bad_input_wallet)[index]
    history_before = gateway.get(f"/v1/wallets/{bad_input_wallet}/transactions").json()
    kwargs: dict[str, Any] = {}
    if isinstance(body, str):
        kwargs = {"content": body, "headers": {"content-type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}
    reply = gateway.request(method, path, **kwargs)
    assert reply.status_code == status, reply.text
    if fields:
        _, named = http_details(reply.json())
        assert named == fields
    assert gateway.get(f"/v1/wallets/{bad_input_wallet}/transactions").json() == history_before
    assert balance(gateway, bad_input_wallet) == 500
