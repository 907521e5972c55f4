"""The mesh as a whole: every service is up, discoverable by reflection, honest about what
it has not implemented yet, and the gateway exposes only public RPCs."""

from __future__ import annotations

import subprocess

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from interpay.notifications.v1 import notifications_service_pb2 as notifications_pb
from interpay.notifications.v1 import notifications_service_pb2_grpc as notifications_grpc
from interpay.payments.v1 import payments_service_pb2 as payments_pb
from interpay.payments.v1 import payments_service_pb2_grpc as payments_grpc
from interpay.users.v1 import users_service_pb2 as users_pb
from interpay.users.v1 import users_service_pb2_grpc as users_grpc
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb
from interpay.wallet.v1 import wallet_service_pb2_grpc as wallet_grpc

from services.framework.topology import SERVICES
from tests.conftest import ROOT
from tests.helpers import grpcurl_tls, http_details, rpc_details

GRPCURL = str(ROOT / ".venv" / "bin" / "grpcurl")


@pytest.mark.parametrize("spec", SERVICES, ids=lambda s: s.name)
def test_every_service_is_serving(spec, channel) -> None:  # type: ignore[no-untyped-def]
    stub = health_pb2_grpc.HealthStub(channel(spec.name))
    for name in ("", spec.grpc_service):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("spec", SERVICES, ids=lambda s: s.name)
def test_reflection_lists_the_service_health_and_reflection(spec, profile) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        [GRPCURL, *grpcurl_tls(profile), f"127.0.0.1:{profile.service_port(spec.name)}", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    listed = set(done.stdout.split())
    assert {spec.grpc_service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed


def test_grpcurl_describes_a_method_from_reflection(profile) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        [
            GRPCURL,
            *grpcurl_tls(profile),
            f"127.0.0.1:{profile.service_port('wallet')}",
            "describe",
            "interpay.wallet.v1.WalletService.TransferFunds",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "rpc TransferFunds ( .interpay.wallet.v1.TransferFundsRequest )" in done.stdout


def test_an_unimplemented_rpc_says_so_over_grpc(channel, new_id) -> None:  # type: ignore[no-untyped-def]
    # Saved payment methods arrive with their own issue.
    stub = payments_grpc.PaymentServiceStub(channel("payments"))
    with pytest.raises(grpc.RpcError) as err:
        stub.ListPaymentMethods(payments_pb.ListPaymentMethodsRequest(user_id=new_id()), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ListPaymentMethods is declared in the contract but not implemented yet" in err.value.details()
    info, _ = rpc_details(err.value)
    assert info is not None and info.reason == "NOT_IMPLEMENTED"


def test_an_unimplemented_rpc_says_so_over_http(gateway: httpx.Client, new_id) -> None:  # type: ignore[no-untyped-def]
    reply = gateway.get(f"/v1/users/{new_id()}/paymentMethods")
    assert reply.status_code == 501
    info, _ = http_details(reply.json())
    assert info is not None and info["reason"] == "NOT_IMPLEMENTED"


def test_the_notifications_service_answers_over_grpc_and_http(channel, gateway, new_id) -> None:  # type: ignore[no-untyped-def]
    unknown = new_id()
    stub = notifications_grpc.NotificationsServiceStub(channel("notifications"))
    with pytest.raises(grpc.RpcError) as err:
        stub.GetNotification(notifications_pb.GetNotificationRequest(notification_id=unknown), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    info, _ = rpc_details(err.value)
    assert info is not None and info.reason == "NOTIFICATION_NOT_FOUND"
    reply = gateway.get(f"/v1/notifications/{unknown}")
    assert reply.status_code == 404
    info_json, _ = http_details(reply.json())
    assert info_json is not None and info_json["reason"] == "NOTIFICATION_NOT_FOUND"


def test_internal_rpcs_are_not_reachable_through_the_gateway(gateway: httpx.Client, profile, new_id) -> None:  # type: ignore[no-untyped-def]
    body = {
        "sourceWalletId": new_id(),
        "destinationWalletId": new_id(),
        "amount": {"amountMinor": "1", "currency": "EUR"},
        "reference": new_id(),
    }
    reply = gateway.post("/interpay.wallet.v1.WalletService/TransferFunds", json=body)
    assert reply.status_code == 404
    # Nor as native gRPC through the gateway's port, while a public RPC is.
    with grpc.insecure_channel(f"127.0.0.1:{profile.gateway_port}") as ch:
        with pytest.raises(grpc.RpcError) as err:
            wallet_grpc.WalletServiceStub(ch).TransferFunds(
                wallet_pb.TransferFundsRequest(
                    source_wallet_id=new_id(), destination_wallet_id=new_id(), reference="x"
                ),
                timeout=5,
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        keys = users_grpc.UserServiceStub(ch).GetJwks(users_pb.GetJwksRequest(), timeout=5)
        assert keys.keys[0].alg == "ES256"
