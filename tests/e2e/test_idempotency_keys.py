"""The framework's Idempotency-Key (services/framework/idempotency.py) on the mutating
public RPCs that keep no key of their own, through Envoy: a retry replays the first
answer, the same key with another request is refused, two at once never both run, a
refusal releases the key, and keys are the caller's own. (CreatePayment, RefundPayment,
TokenizeCard and the other RPCs that store their key with their effect are tested in
test_idempotency_races.py and their own tests.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from services.framework.topology import Profile
from tests.e2e.test_edge_auth import User
from tests.e2e.test_slice_http import fund, open_wallet
from tests.helpers import http_details

CUR = "EUR"


@pytest.fixture(scope="module")
def anonymous(profile: Profile) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{profile.gateway_port}", timeout=30) as client:
        yield client


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def reason(reply: httpx.Response) -> str:
    info, _ = http_details(reply.json())
    assert info is not None, reply.text
    return str(info["reason"])


def registration(tag: str, **overrides: Any) -> dict[str, Any]:
    return {
        "email": f"idem.{tag}@example.org",
        "phone": f"+4915{int(tag, 16) % 10**9:09d}",
        "password": "correct horse battery staple",
        "displayName": "Idem Potent",
        "countryCode": "DE",
        **overrides,
    }


def test_a_retried_registration_replays_the_first_answer(anonymous: httpx.Client) -> None:
    body, key = registration(uuid.uuid4().hex[:12]), str(uuid.uuid4())
    first = anonymous.post("/v1/users", headers=keyed(key), json=body)
    assert first.status_code == 200, first.text
    again = anonymous.post("/v1/users", headers=keyed(key), json=body)
    assert again.status_code == 200 and again.json() == first.json()
    # Without the key, the same request is a second registration: refused, nothing new.
    repeat = anonymous.post("/v1/users", json=body)
    assert repeat.status_code == 409 and reason(repeat) == "EMAIL_TAKEN", repeat.text
    # The same key with another request is an error naming the mismatch.
    other = anonymous.post("/v1/users", headers=keyed(key), json={**body, "displayName": "Someone Else"})
    assert other.status_code == 400 and reason(other) == "IDEMPOTENCY_MISMATCH", other.text


def test_state_changes_replay_rather_than_fail_on_a_retry(gateway: httpx.Client) -> None:
    wallet = open_wallet(gateway, str(uuid.uuid4()), CUR)
    key = str(uuid.uuid4())
    path = f"/v1/wallets/{wallet['walletId']}:freeze"
    frozen = gateway.post(path, headers=keyed(key), json={"reason": "chargeback review"})
    assert frozen.status_code == 200, frozen.text
    replayed = gateway.post(path, headers=keyed(key), json={"reason": "chargeback review"})
    assert replayed.status_code == 200 and replayed.json() == frozen.json()
    assert frozen.json()["wallet"]["state"] == "STATE_FROZEN"


def test_a_refusal_releases_the_key_for_a_corrected_retry(gateway: httpx.Client) -> None:
    wallet = open_wallet(gateway, str(uuid.uuid4()), CUR)
    key = str(uuid.uuid4())
    body = {"amount": {"amountMinor": "500", "currency": CUR}, "reference": str(uuid.uuid4())}
    close = gateway.post(f"/v1/wallets/{wallet['walletId']}:close", headers=keyed(key), json={})
    assert close.status_code == 200, close.text
    # A closed wallet takes no money: refused, and the key is not spent on the refusal ...
    refused = gateway.post(f"/v1/wallets/{wallet['walletId']}:fund", headers=keyed(key + "-fund"), json=body)
    assert refused.status_code == 400 and reason(refused) == "WALLET_NOT_ACTIVE", refused.text
    other = open_wallet(gateway, str(uuid.uuid4()), CUR)
    # ... so the same key can carry the corrected request (to an open wallet) and run.
    funded = gateway.post(f"/v1/wallets/{other['walletId']}:fund", headers=keyed(key + "-fund"), json=body)
    assert funded.status_code == 200, funded.text


def test_concurrent_requests_with_one_key_run_once(anonymous: httpx.Client) -> None:
    user = User(anonymous)
    key = str(uuid.uuid4())
    body = {"ownerType": "OWNER_TYPE_USER", "ownerId": user.user_id, "currency": "CHF"}

    def create(_: int) -> httpx.Response:
        return anonymous.post("/v1/wallets", headers={**user.headers, **keyed(key)}, json=body)

    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(create, range(10)))
    ok = [r for r in replies if r.status_code == 200]
    busy = [r for r in replies if r.status_code == 409]
    assert ok and len(ok) + len(busy) == len(replies), [r.text for r in replies]
    assert all(reason(r) == "REQUEST_IN_PROGRESS" for r in busy)
    assert len({r.text for r in ok}) == 1  # every success is the one wallet
    # Once it finished, every retry replays it, and the user has exactly one CHF wallet.
    assert create(0).json() == ok[0].json()
    wallets = anonymous.get(
        "/v1/wallets", headers=user.headers, params={"ownerType": "OWNER_TYPE_USER", "ownerId": user.user_id}
    ).json()["wallets"]
    assert [w["walletId"] for w in wallets if w["balance"]["currency"] == "CHF"] == [
        ok[0].json()["wallet"]["walletId"]
    ]


def test_keys_are_the_callers_own(anonymous: httpx.Client) -> None:
    key = str(uuid.uuid4())
    mine, theirs = User(anonymous), User(anonymous)
    opened = [
        anonymous.post(
            "/v1/wallets",
            headers={**person.headers, **keyed(key)},
            json={"ownerType": "OWNER_TYPE_USER", "ownerId": person.user_id, "currency": CUR},
        )
        for person in (mine, theirs)
    ]
    assert [r.status_code for r in opened] == [200, 200], [r.text for r in opened]
    assert [r.json()["wallet"]["ownerId"] for r in opened] == [mine.user_id, theirs.user_id]


def test_a_malformed_key_is_a_clear_error(gateway: httpx.Client) -> None:
    wallet = open_wallet(gateway, str(uuid.uuid4()), CUR)
    reply = gateway.post(
        f"/v1/wallets/{wallet['walletId']}:freeze", headers=keyed("x" * 300), json={"reason": "review"}
    )
    assert reply.status_code == 400 and reason(reply) == "INVALID_REQUEST", reply.text
    assert fund(gateway, wallet["walletId"], 100, CUR)["wallet"]["state"] == "STATE_ACTIVE"
