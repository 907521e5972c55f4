"""Users' own transfers and payouts through Envoy, with real tokens from the users service:
a user moves money only out of their own wallets (another's is WALLET_NOT_FOUND, exactly
as a wallet that does not exist, and nothing is created or moved), reads only the
transfers from or to their wallets and the payouts from them, and the fraud check of
their transfer carries the device fingerprint and IP derived at the edge
(services/framework/edge_context.py).

Every user here sends a user-agent of their own and connects from a loopback address of
their own (tests/e2e/client_address.py), so the fraud service's per-device and per-IP
velocity rules never see one device or one address across tests or runs. The address is
the one Envoy saw the connection come from: whatever a client writes in
`x-envoy-external-address` or `x-forwarded-for` is overwritten at the gateway
(scripts/gateway_config.py), which the fraud check's test below shows."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from interpay.fraud.v1 import fraud_service_pb2 as fraud_pb
from interpay.fraud.v1.fraud_service_pb2_grpc import FraudServiceStub

from services.framework.topology import Profile
from tests.e2e.client_address import SourceClient
from tests.e2e.test_edge_auth import User, anonymous, refused
from tests.e2e.test_slice_http import fund
from tests.e2e.test_transfers_payouts import PAID, amounts, payout_body, transfer_body, user_wallet

__all__ = ["anonymous"]  # the gateway without a credential, a fixture of this module too

ACCEPT_LANGUAGE = "de-DE,de;q=0.9"
ACCEPT_ENCODING = "gzip, deflate"


class Person(User):
    """A registered, logged-in user whose calls (`http`) carry their own device headers
    and come from their own address (`ip`)."""

    def __init__(self, anonymous: httpx.Client, profile: Profile) -> None:
        super().__init__(anonymous)
        self.user_agent = f"interpay-e2e/{uuid.uuid4().hex}"
        self.headers = {
            **self.headers,
            "user-agent": self.user_agent,
            "accept-language": ACCEPT_LANGUAGE,
            "accept-encoding": ACCEPT_ENCODING,
        }
        self.http = SourceClient(profile, headers=self.headers)
        self.ip = self.http.source_address

    def wallet(self, anonymous: httpx.Client, gateway: httpx.Client, funded: int = 0) -> str:
        wallet_id = self.open_wallet(anonymous)
        if funded:
            fund(gateway, wallet_id, funded)
        return wallet_id


@pytest.fixture
def person(anonymous: httpx.Client, profile: Profile) -> Iterator[Callable[[], Person]]:
    people: list[Person] = []

    def make() -> Person:
        people.append(Person(anonymous, profile))
        return people[-1]

    yield make
    for someone in people:
        someone.http.close()


def transfer(who: Person, body: dict[str, Any]) -> httpx.Response:
    return who.http.post("/v1/transfers", json=body)


def test_a_user_transfers_from_their_own_wallet(
    anonymous: httpx.Client, gateway: httpx.Client, person: Callable[[], Person]
) -> None:
    alice, bob = person(), person()
    source, destination = alice.wallet(anonymous, gateway, 10_000), bob.wallet(anonymous, gateway)
    reply = transfer(alice, transfer_body(source, destination, 2_500))
    assert reply.status_code == 200, reply.text
    assert reply.json()["transfer"]["state"] == "STATE_COMPLETED"
    assert amounts(gateway, source)[0] == 7_500 and amounts(gateway, destination)[0] == 2_500
    # To any existing wallet, not only one's own: it is a P2P transfer.
    to_operator_wallet = user_wallet(gateway)
    reply = transfer(alice, transfer_body(source, to_operator_wallet, 500))
    assert reply.status_code == 200, reply.text


def test_another_users_wallet_is_not_found_and_nothing_moves(
    anonymous: httpx.Client, gateway: httpx.Client, person: Callable[[], Person]
) -> None:
    alice, mallory = person(), person()
    victim = alice.wallet(anonymous, gateway, 10_000)
    loot = mallory.wallet(anonymous, gateway)
    body = transfer_body(victim, loot, 5_000)
    info = refused(transfer(mallory, body), 404, "WALLET_NOT_FOUND")
    assert info["metadata"]["wallet_id"] == victim
    # The same answer as for a wallet that does not exist: nothing about the victim leaks.
    ghost = str(uuid.uuid4())
    ghost_info = refused(transfer(mallory, transfer_body(ghost, loot, 5_000)), 404, "WALLET_NOT_FOUND")
    assert set(ghost_info["metadata"]) == set(info["metadata"])
    payout = payout_body(victim, PAID, 5_000)
    refused(mallory.http.post("/v1/payouts", json=payout), 404, "WALLET_NOT_FOUND")
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
    assert transfer(alice, body).status_code == 200
    path = f"/v1/transfers/{body['transferId']}"
    for reader in (alice, bob):  # the sender and the receiver
        reply = reader.http.get(path)
        assert reply.status_code == 200, reply.text
        assert reply.json()["transfer"]["transferId"] == body["transferId"]
    refused(eve.http.get(path), 404, "TRANSFER_NOT_FOUND")
    # Lists: one's own wallets only; another's wallet as if it did not exist.
    mine = alice.http.get("/v1/transfers", params={"walletId": source})
    assert mine.status_code == 200, mine.text
    assert [t["transferId"] for t in mine.json()["transfers"]] == [body["transferId"]]
    received = bob.http.get("/v1/transfers", params={"walletId": destination})
    assert [t["transferId"] for t in received.json()["transfers"]] == [body["transferId"]]
    refused(
        eve.http.get("/v1/transfers", params={"walletId": source}),
        404,
        "WALLET_NOT_FOUND",
    )
    empty = eve.http.get("/v1/transfers", params={"walletId": eve_wallet})
    assert empty.status_code == 200 and empty.json()["transfers"] == []
    # Operators still read everything.
    assert gateway.get(path).status_code == 200


def test_a_user_pays_out_from_their_own_wallet(
    anonymous: httpx.Client, gateway: httpx.Client, person: Callable[[], Person]
) -> None:
    alice, eve = person(), person()
    source = alice.wallet(anonymous, gateway, 10_000)
    body = payout_body(source, PAID, 4_000)
    reply = alice.http.post("/v1/payouts", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["payout"]["state"] in ("STATE_PROCESSING", "STATE_COMPLETED")
    assert amounts(gateway, source)[0] == 6_000
    path = f"/v1/payouts/{body['payoutId']}"
    assert alice.http.get(path).status_code == 200
    refused(eve.http.get(path), 404, "PAYOUT_NOT_FOUND")
    listed = alice.http.get("/v1/payouts", params={"walletId": source})
    assert [p["payoutId"] for p in listed.json()["payouts"]] == [body["payoutId"]]
    refused(
        eve.http.get("/v1/payouts", params={"walletId": source}),
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
    profile: Profile,
) -> None:
    alice, bob = person(), person()
    source, destination = alice.wallet(anonymous, gateway, 10_000), bob.wallet(anonymous, gateway)
    body = transfer_body(source, destination, 700)
    assert transfer(alice, body).status_code == 200
    check = _fraud_check(channel, body["transferId"])
    recipe = f"{alice.user_agent}|{ACCEPT_LANGUAGE}|{alice.ip}|{ACCEPT_ENCODING}"
    assert check.ip_address == alice.ip
    assert check.device_fingerprint == hashlib.sha256(recipe.encode()).hexdigest()
    assert check.user_id == alice.user_id
    # Another device, another fingerprint.
    laptop = {"user-agent": f"{alice.user_agent}-laptop"}
    second = transfer_body(source, destination, 300)
    assert alice.http.post("/v1/transfers", json=second, headers=laptop).status_code == 200
    assert _fraud_check(channel, second["transferId"]).device_fingerprint not in (
        "",
        check.device_fingerprint,
    )
    # An address the client writes in its headers is not believed: Envoy overwrites it with
    # the connection's, so the check still has alice's own, and so her fingerprint.
    third = transfer_body(source, destination, 200)
    forged = {"x-envoy-external-address": "192.0.2.66", "x-forwarded-for": "192.0.2.67, 10.0.0.1"}
    assert alice.http.post("/v1/transfers", json=third, headers=forged).status_code == 200
    forged_check = _fraud_check(channel, third["transferId"])
    assert (forged_check.ip_address, forged_check.device_fingerprint) == (alice.ip, check.device_fingerprint)
    # Another address is another IP, and another fingerprint (the IP is part of it).
    with SourceClient(profile, headers=alice.headers) as elsewhere:
        fourth = transfer_body(source, destination, 150)
        assert elsewhere.post("/v1/transfers", json=fourth).status_code == 200
    moved = _fraud_check(channel, fourth["transferId"])
    assert moved.ip_address == elsewhere.source_address != alice.ip
    moved_recipe = f"{alice.user_agent}|{ACCEPT_LANGUAGE}|{elsewhere.source_address}|{ACCEPT_ENCODING}"
    assert moved.device_fingerprint == hashlib.sha256(moved_recipe.encode()).hexdigest()
    # A payout's check too.
    payout = payout_body(source, PAID, 1_000)
    assert alice.http.post("/v1/payouts", json=payout).status_code == 200
    assert _fraud_check(channel, payout["payoutId"]).device_fingerprint == check.device_fingerprint
    # An operator's transfer is no payer's device: nothing is derived.
    operators = transfer_body(source, destination, 100)
    assert gateway.post("/v1/transfers", json=operators).status_code == 200
    by_operator = _fraud_check(channel, operators["transferId"])
    assert (by_operator.device_fingerprint, by_operator.ip_address) == ("", "")
