"""Users' own transfers and payouts through Envoy, with real tokens from the users service:
a user moves money only out of their own wallets (another's is WALLET_NOT_FOUND, exactly
as a wallet that does not exist, and nothing is created or moved), reads only the
transfers from or to their wallets and the payouts from them, and the fraud check of
their transfer carries the device fingerprint and IP derived at the edge
(services/framework/edge_context.py).

Every user here sends a user-agent and an `x-envoy-external-address` of their own, so the
fraud service's per-device and per-IP velocity rules never see one device or one address
across tests or runs. That header stands in for the one an edge Envoy sets for an external
client; the mesh's Envoy, on loopback, leaves it as the client sent it (see the report in
services/framework/edge_context.py)."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from interpay.fraud.v1 import fraud_service_pb2 as fraud_pb
from interpay.fraud.v1.fraud_service_pb2_grpc import FraudServiceStub

from tests.e2e.test_edge_auth import User, anonymous, refused
from tests.e2e.test_slice_http import fund
from tests.e2e.test_transfers_payouts import PAID, amounts, payout_body, transfer_body, user_wallet

__all__ = ["anonymous"]  # the gateway without a credential, a fixture of this module too

ACCEPT_LANGUAGE = "de-DE,de;q=0.9"
ACCEPT_ENCODING = "gzip, deflate"
# Without x-envoy-external-address a call through the gateway is from Envoy's connection:
# the mesh's Envoy listens on loopback and does not set x-forwarded-for.
GATEWAY_PEER_IP = "127.0.0.1"


class Person(User):
    """A registered, logged-in user whose calls carry their own device headers."""

    def __init__(self, anonymous: httpx.Client) -> None:
        super().__init__(anonymous)
        self.user_agent = f"interpay-e2e/{uuid.uuid4().hex}"
        self.ip = f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"  # benchmarking range
        self.headers = {
            **self.headers,
            "x-envoy-external-address": self.ip,
            "user-agent": self.user_agent,
            "accept-language": ACCEPT_LANGUAGE,
            "accept-encoding": ACCEPT_ENCODING,
        }

    def wallet(self, anonymous: httpx.Client, gateway: httpx.Client, funded: int = 0) -> str:
        wallet_id = self.open_wallet(anonymous)
        if funded:
            fund(gateway, wallet_id, funded)
        return wallet_id


@pytest.fixture
def person(anonymous: httpx.Client) -> Callable[[], Person]:
    return lambda: Person(anonymous)


def transfer(anonymous: httpx.Client, who: Person, body: dict[str, Any]) -> httpx.Response:
    return anonymous.post("/v1/transfers", json=body, headers=who.headers)


def test_a_user_transfers_from_their_own_wallet(
    anonymous: httpx.Client, gateway: httpx.Client, person: Callable[[], Person]
) -> None:
    alice, bob = person(), person()
    source, destination = alice.wallet(anonymous, gateway, 10_000), bob.wallet(anonymous, gateway)
    reply = transfer(anonymous, alice, transfer_body(source, destination, 2_500))
    assert reply.status_code == 200, reply.text
    assert reply.json()["transfer"]["state"] == "STATE_COMPLETED"
    assert amounts(gateway, source)[0] == 7_500 and amounts(gateway, destination)[0] == 2_500
    # To any existing wallet, not only one's own: it is a P2P transfer.
    to_operator_wallet = user_wallet(gateway)
    reply = transfer(anonymous, alice, transfer_body(source, to_operator_wallet, 500))
    assert reply.status_code == 200, reply.text


def test_another_users_wallet_is_not_found_and_nothing_moves(
    anonymous: httpx.Client, gateway: httpx.Client, person: Callable[[], Person]
) -> None:
    alice, mallory = person(), person()
    victim = alice.wallet(anonymous, gateway, 10_000)
    loot = mallory.wallet(anonymous, gateway)
    body = transfer_body(victim, loot, 5_000)
    info = refused(transfer(anonymous, mallory, body), 404, "WALLET_NOT_FOUND")
    assert info["metadata"]["wallet_id"] == victim
    # The same answer as for a wallet that does not exist: nothing about the victim leaks.
    ghost = str(uuid.uuid4())
    ghost_info = refused(
        transfer(anonymous, mallory, transfer_body(ghost, loot, 5_000)), 404, "WALLET_NOT_FOUND"
    )
    assert set(ghost_info["metadata"]) == set(info["metadata"])
    payout = payout_body(victim, PAID, 5_000)
    refused(anonymous.post("/v1/payouts", json=payout, headers=mallory.headers), 404, "WALLET_NOT_FOUND")
    # Nothing was created, nothing moved.
    assert gateway.get(f"/v1/transfers/{body['transferId']}").status_code == 404
    assert gateway.get(f"/v1/payouts/{payout['payoutId']}").status_code == 404
    assert amounts(gateway, victim) == (10_000, 10_000, 0)
    assert amounts(gateway, loot) == (0, 0, 0)


def test_a_user_reads_their_own_transfers_and_not_anothers(
    anonymous: httpx.Client, gateway: httpx.Client, person: Callable[[], Person]
) -> None:
    alice, bob, eve = person(), person(), person()
    source, destination = alice.wallet(anonymous, gateway, 10_000), bob.wallet(anonymous, gateway)
    eve_wallet = eve.wallet(anonymous, gateway)
    body = transfer_body(source, destination, 1_000)
    assert transfer(anonymous, alice, body).status_code == 200
    path = f"/v1/transfers/{body['transferId']}"
    for reader in (alice, bob):  # the sender and the receiver
        reply = anonymous.get(path, headers=reader.headers)
        assert reply.status_code == 200, reply.text
        assert reply.json()["transfer"]["transferId"] == body["transferId"]
    refused(anonymous.get(path, headers=eve.headers), 404, "TRANSFER_NOT_FOUND")
    # Lists: one's own wallets only; another's wallet as if it did not exist.
    mine = anonymous.get("/v1/transfers", params={"walletId": source}, headers=alice.headers)
    assert mine.status_code == 200, mine.text
    assert [t["transferId"] for t in mine.json()["transfers"]] == [body["transferId"]]
    received = anonymous.get("/v1/transfers", params={"walletId": destination}, headers=bob.headers)
    assert [t["transferId"] for t in received.json()["transfers"]] == [body["transferId"]]
    refused(
        anonymous.get("/v1/transfers", params={"walletId": source}, headers=eve.headers),
        404,
        "WALLET_NOT_FOUND",
    )
    empty = anonymous.get("/v1/transfers", params={"walletId": eve_wallet}, headers=eve.headers)
    assert empty.status_code == 200 and empty.json()["transfers"] == []
    # Operators still read everything.
    assert gateway.get(path).status_code == 200


def test_a_user_pays_out_from_their_own_wallet(
    anonymous: httpx.Client, gateway: httpx.Client, person: Callable[[], Person]
) -> None:
    alice, eve = person(), person()
    source = alice.wallet(anonymous, gateway, 10_000)
    body = payout_body(source, PAID, 4_000)
    reply = anonymous.post("/v1/payouts", json=body, headers=alice.headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["payout"]["state"] in ("STATE_PROCESSING", "STATE_COMPLETED")
    assert amounts(gateway, source)[0] == 6_000
    path = f"/v1/payouts/{body['payoutId']}"
    assert anonymous.get(path, headers=alice.headers).status_code == 200
    refused(anonymous.get(path, headers=eve.headers), 404, "PAYOUT_NOT_FOUND")
    listed = anonymous.get("/v1/payouts", params={"walletId": source}, headers=alice.headers)
    assert [p["payoutId"] for p in listed.json()["payouts"]] == [body["payoutId"]]
    refused(
        anonymous.get("/v1/payouts", params={"walletId": source}, headers=eve.headers),
        404,
        "WALLET_NOT_FOUND",
    )


def _fraud_check(channel: Callable[[str], grpc.Channel], transaction_id: str) -> Any:
    checks = (
        FraudServiceStub(channel("fraud"))
        .ListFraudChecks(fraud_pb.ListFraudChecksRequest(transaction_id=transaction_id))
        .fraud_checks
    )
    assert len(checks) == 1, checks
    return checks[0]


def test_the_fraud_check_of_a_users_transfer_carries_their_device_and_ip(
    anonymous: httpx.Client,
    gateway: httpx.Client,
    person: Callable[[], Person],
    channel: Callable[[str], grpc.Channel],
) -> None:
    alice, bob = person(), person()
    source, destination = alice.wallet(anonymous, gateway, 10_000), bob.wallet(anonymous, gateway)
    body = transfer_body(source, destination, 700)
    assert transfer(anonymous, alice, body).status_code == 200
    check = _fraud_check(channel, body["transferId"])
    recipe = f"{alice.user_agent}|{ACCEPT_LANGUAGE}|{alice.ip}|{ACCEPT_ENCODING}"
    assert check.ip_address == alice.ip
    assert check.device_fingerprint == hashlib.sha256(recipe.encode()).hexdigest()
    assert check.user_id == alice.user_id
    # Another device, another fingerprint.
    laptop = {**alice.headers, "user-agent": f"{alice.user_agent}-laptop"}
    second = transfer_body(source, destination, 300)
    assert anonymous.post("/v1/transfers", json=second, headers=laptop).status_code == 200
    assert _fraud_check(channel, second["transferId"]).device_fingerprint not in (
        "",
        check.device_fingerprint,
    )
    # x-forwarded-for is the client's own say (the mesh's Envoy neither sets nor appends
    # it) and is not read: without x-envoy-external-address the IP is the gateway peer's.
    unforwarded = {k: v for k, v in alice.headers.items() if k != "x-envoy-external-address"}
    third = transfer_body(source, destination, 200)
    forged = {**unforwarded, "x-forwarded-for": "192.0.2.66"}
    assert anonymous.post("/v1/transfers", json=third, headers=forged).status_code == 200
    peer_check = _fraud_check(channel, third["transferId"])
    assert peer_check.ip_address == GATEWAY_PEER_IP
    peer_recipe = f"{alice.user_agent}|{ACCEPT_LANGUAGE}|{GATEWAY_PEER_IP}|{ACCEPT_ENCODING}"
    assert peer_check.device_fingerprint == hashlib.sha256(peer_recipe.encode()).hexdigest()
    # A payout's check too.
    payout = payout_body(source, PAID, 1_000)
    assert anonymous.post("/v1/payouts", json=payout, headers=alice.headers).status_code == 200
    assert _fraud_check(channel, payout["payoutId"]).device_fingerprint == check.device_fingerprint
    # An operator's transfer is no payer's device: nothing is derived.
    operators = transfer_body(source, destination, 100)
    assert gateway.post("/v1/transfers", json=operators).status_code == 200
    by_operator = _fraud_check(channel, operators["transferId"])
    assert (by_operator.device_fingerprint, by_operator.ip_address) == ("", "")
