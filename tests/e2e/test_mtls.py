"""Service-to-service mTLS on the real mesh: a client without a certificate from the mesh's
CA never gets an answer, a client checks that it reached the service it meant, and an
internal RPC admits exactly the identities its allowlist in topology.py names."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from interpay.common.v1.money_pb2 import Money
from interpay.vault.v1 import vault_service_pb2 as vault_pb
from interpay.vault.v1.vault_service_pb2_grpc import VaultServiceStub
from interpay.wallet.v1 import wallet_service_pb2 as pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from scripts import certs
from services.framework.identity import TlsFiles, channel_options, plaintext
from services.framework.topology import BY_NAME, GATEWAY, OPERATOR, Profile
from tests.helpers import rpc_details, service_channel, tls_files

pytestmark = pytest.mark.skipif(plaintext(), reason="INTERPAY_PLAINTEXT=1: the mesh runs without mTLS")


def health_check(ch: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return reply.status  # type: ignore[no-any-return]


def refused_at_handshake(ch: grpc.Channel) -> None:
    with ch, pytest.raises(grpc.RpcError) as err:
        health_check(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()


def wallet_target(profile: Profile) -> str:
    return f"127.0.0.1:{profile.service_port('wallet')}"


def test_the_operator_certificate_is_served(profile: Profile) -> None:
    with service_channel(profile, "wallet") as ch:
        assert health_check(ch) == health_pb2.HealthCheckResponse.SERVING


def test_a_plaintext_client_is_refused(profile: Profile) -> None:
    refused_at_handshake(grpc.insecure_channel(wallet_target(profile)))


def test_a_client_without_a_certificate_is_refused(profile: Profile) -> None:
    tls = tls_files(profile)
    assert tls is not None
    # It trusts the mesh's CA and so would accept the server; the server does not accept it.
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes())
    refused_at_handshake(grpc.secure_channel(wallet_target(profile), credentials, channel_options("wallet")))


def test_a_client_certificate_from_another_ca_is_refused(profile: Profile, tmp_path: Path) -> None:
    tls = tls_files(profile)
    assert tls is not None
    # The right identity (the operator's SPIFFE id), signed by a CA the mesh does not trust.
    ca_key, ca_cert = certs.new_ca("not the InterPay mesh CA")
    key, cert = certs.issue(ca_key, ca_cert, OPERATOR)
    certs.write_pair(tmp_path, OPERATOR, key, cert)
    forged = TlsFiles(tmp_path / f"{OPERATOR}.pem", tmp_path / f"{OPERATOR}-key.pem", tls.ca)
    refused_at_handshake(
        grpc.secure_channel(wallet_target(profile), forged.channel_credentials(), channel_options("wallet"))
    )


def test_a_client_refuses_a_server_that_is_not_the_service_it_meant(profile: Profile) -> None:
    tls = tls_files(profile)
    assert tls is not None
    # The vault's port, reached by a client that meant the wallet: the vault's certificate
    # does not name the wallet, so the client never sends its request.
    vault_as_wallet = grpc.secure_channel(
        f"127.0.0.1:{profile.service_port('vault')}", tls.channel_credentials(), channel_options("wallet")
    )
    refused_at_handshake(vault_as_wallet)


def funded_wallets(profile: Profile) -> tuple[str, str]:
    with service_channel(profile, "wallet") as ch:
        stub = WalletServiceStub(ch)
        ids = [
            stub.CreateWallet(
                pb.CreateWalletRequest(
                    owner_type=pb.OWNER_TYPE_USER, owner_id=str(uuid.uuid4()), currency="NOK"
                ),
                timeout=10,
            ).wallet.wallet_id
            for _ in range(2)
        ]
        stub.FundWallet(
            pb.FundWalletRequest(
                wallet_id=ids[0], amount=Money(amount_minor=500, currency="NOK"), reference=str(uuid.uuid4())
            ),
            timeout=10,
        )
    return ids[0], ids[1]


def transfer(profile: Profile, identity: str, source: str, destination: str) -> pb.TransferFundsResponse:
    with service_channel(profile, "wallet", identity) as ch:
        return WalletServiceStub(ch).TransferFunds(  # type: ignore[no-any-return]
            pb.TransferFundsRequest(
                source_wallet_id=source,
                destination_wallet_id=destination,
                amount=Money(amount_minor=100, currency="NOK"),
                reference=str(uuid.uuid4()),
            ),
            timeout=10,
        )


@pytest.mark.parametrize("identity", ["users", "payments", GATEWAY, OPERATOR])
def test_an_identity_outside_the_allowlist_is_permission_denied(profile: Profile, identity: str) -> None:
    assert identity not in BY_NAME["wallet"].internal_callers["TransferFunds"]
    source, destination = funded_wallets(profile)
    with pytest.raises(grpc.RpcError) as err:
        transfer(profile, identity, source, destination)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info, _ = rpc_details(err.value)
    assert info is not None and info.reason == "PERMISSION_DENIED" and info.domain == "wallet.interpay.dev"
    assert info.metadata["caller"] == identity and info.metadata["rpc"] == "TransferFunds"
    # Refused before the handler ran: no money moved.
    with service_channel(profile, "wallet") as ch:
        reply = WalletServiceStub(ch).GetWallet(pb.GetWalletRequest(wallet_id=source), timeout=10)
    assert reply.wallet.balance.amount_minor == 500


@pytest.mark.parametrize("identity", BY_NAME["wallet"].internal_callers["TransferFunds"])
def test_an_identity_on_the_allowlist_is_served(profile: Profile, identity: str) -> None:
    source, destination = funded_wallets(profile)
    reply = transfer(profile, identity, source, destination)
    assert reply.source_wallet.balance.amount_minor == 400
    assert reply.destination_wallet.balance.amount_minor == 100


def test_refusal_comes_before_validation(profile: Profile) -> None:
    # An intruder learns nothing about the request it may not make, not even its fields.
    with pytest.raises(grpc.RpcError) as err:
        transfer(profile, "users", "not-a-wallet", "")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_key_administration_admits_the_operator_and_no_service(profile: Profile) -> None:
    with service_channel(profile, "vault") as ch:
        status = VaultServiceStub(ch).GetKeyStatus(vault_pb.GetKeyStatusRequest(), timeout=10)
    assert status.active_version >= 1
    with service_channel(profile, "vault", "orchestrator") as ch:
        with pytest.raises(grpc.RpcError) as err:
            VaultServiceStub(ch).GetKeyStatus(vault_pb.GetKeyStatusRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_gateway_reaches_the_services_over_mtls(gateway: httpx.Client, profile: Profile) -> None:
    reply = gateway.post(
        "/v1/wallets", json={"ownerType": "OWNER_TYPE_USER", "ownerId": str(uuid.uuid4()), "currency": "NOK"}
    )
    assert reply.status_code == 200, reply.text
    wallet_id = reply.json()["wallet"]["walletId"]
    assert gateway.get(f"/v1/wallets/{wallet_id}").json()["wallet"]["walletId"] == wallet_id
