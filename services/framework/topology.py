"""The mesh's shape, declared once: services, ports, and who may call what.

The local mesh generator (scripts/mesh.py), the Envoy config, the tests and the
Kubernetes/Istio manifests all read this module, so a port or an allowlist entry is
never written twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GATEWAY = "gateway"  # the Envoy edge: the only caller of public RPCs from outside
# Engineers (grpcurl) and the test suite; admitted only where an allowlist names it.
OPERATOR = "operator"
SERVICE_NAMES = (
    "users",
    "wallet",
    "payments",
    "transfers",
    "merchants",
    "fraud",
    "vault",
    "orchestrator",
    "notifications",
)
# Every service authenticates the callers of its public RPCs (services/framework/
# edge_auth.py) with these two: the users service's JWKS and the merchants service's
# AuthenticateApiKey. A service reaches them at INTERPAY_<PEER>_ADDR like its own peers.
EDGE_AUTH_PEERS = ("users", "merchants")


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the mesh."""

    name: str
    index: int  # the service's port is the profile's first_service_port + index
    grpc_service: str  # the full name of the gRPC service it serves
    proto_module: str  # the generated module declaring it
    peers: tuple[str, ...] = ()  # services it calls
    # Internal RPC name -> the mTLS identities allowed to call it, enforced by the
    # framework (interceptors.AllowlistInterceptor): any other identity is refused with
    # PERMISSION_DENIED. Public RPCs (those with an HTTP rule) are open to every holder
    # of a mesh certificate at this layer; who may call them is the edge's policy
    # (services/framework/edge_policy.py). The Istio AuthorizationPolicies are to be
    # generated from this.
    internal_callers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def database(self) -> str:
        return f"interpay_{self.name}"


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "users",
        0,
        "interpay.users.v1.UserService",
        "interpay.users.v1.users_service_pb2",
        internal_callers={"GetUserRiskProfile": ("fraud", "orchestrator")},
    ),
    ServiceSpec(
        "wallet",
        1,
        "interpay.wallet.v1.WalletService",
        "interpay.wallet.v1.wallet_service_pb2",
        internal_callers={
            rpc: ("orchestrator", "transfers")
            for rpc in (
                "TransferFunds",
                "PlaceHold",
                "CaptureHold",
                "ReleaseHold",
                "GetHold",
                "GetSystemWallet",
            )
        },
    ),
    ServiceSpec(
        "payments",
        2,
        "interpay.payments.v1.PaymentService",
        "interpay.payments.v1.payments_service_pb2",
        peers=("orchestrator", "vault", "merchants"),
        internal_callers={
            "RecordPaymentTransition": ("orchestrator",),
            "RecordRefundOutcome": ("orchestrator",),
        },
    ),
    ServiceSpec(
        "transfers",
        3,
        "interpay.transfers.v1.TransfersService",
        "interpay.transfers.v1.transfers_service_pb2",
        peers=("wallet", "orchestrator"),
        internal_callers={
            "RecordPayoutOutcome": ("orchestrator",),
            "RecordTransferOutcome": ("orchestrator",),
        },
    ),
    ServiceSpec(
        "merchants",
        4,
        "interpay.merchants.v1.MerchantsService",
        "interpay.merchants.v1.merchants_service_pb2",
        peers=("wallet", "transfers"),
        internal_callers={
            # Every service checks the API keys its public RPCs are called with.
            "AuthenticateApiKey": (GATEWAY, *SERVICE_NAMES),
            "GetMerchantForPayment": ("payments", "orchestrator"),
            # Webhook endpoints with their signing secrets: only the sender of deliveries.
            "ListWebhookEndpointsForDelivery": ("notifications",),
        },
    ),
    ServiceSpec(
        "fraud",
        5,
        "interpay.fraud.v1.FraudService",
        "interpay.fraud.v1.fraud_service_pb2",
        peers=("users",),
        internal_callers={"CheckTransaction": ("orchestrator",)},
    ),
    ServiceSpec(
        "vault",
        6,
        "interpay.vault.v1.VaultService",
        "interpay.vault.v1.vault_service_pb2",
        internal_callers={
            "DetokenizeCard": ("orchestrator",),  # the card processor adapter lives there
            "RotateDataKey": (OPERATOR,),  # key administration: people, never a service
            "GetKeyStatus": (OPERATOR,),
        },
    ),
    ServiceSpec(
        "orchestrator",
        7,
        "interpay.orchestrator.v1.OrchestratorService",
        "interpay.orchestrator.v1.orchestrator_service_pb2",
        peers=("payments", "wallet", "fraud", "vault", "transfers", "merchants"),
        internal_callers={
            rpc: ("payments", "transfers", "merchants")
            for rpc in (
                "StartPaymentSaga",
                "StartCaptureSaga",
                "StartCancelSaga",
                "StartRefundSaga",
                "StartTransferSaga",
                "StartPayoutSaga",
            )
        },
    ),
    ServiceSpec(
        "notifications",
        8,
        "interpay.notifications.v1.NotificationsService",
        "interpay.notifications.v1.notifications_service_pb2",
        peers=("merchants",),  # webhook endpoints and their signing secrets
    ),
)

BY_NAME = {spec.name: spec for spec in SERVICES}
if tuple(BY_NAME) != SERVICE_NAMES:
    raise RuntimeError("SERVICE_NAMES must list the services of SERVICES, in order")


@dataclass(frozen=True)
class Profile:
    """The loopback ports of one local mesh: `dev` for make up/demo, `test` for make test,
    `bench` for make bench, so the three never collide."""

    name: str
    gateway_port: int
    envoy_admin_port: int
    postgres_port: int
    redis_port: int
    first_service_port: int
    first_metrics_port: int  # each service's Prometheus /metrics, by the same index
    kafka_port: int  # the broker's client listener (INTERPAY_KAFKA_BOOTSTRAP)
    kafka_controller_port: int  # the KRaft controller listener
    cassandra_port: int  # CQL native protocol (INTERPAY_CASSANDRA_HOSTS/PORT)
    cassandra_storage_port: int  # inter-node messaging; bound even by a single node

    def service_port(self, name: str) -> int:
        return self.first_service_port + BY_NAME[name].index

    def metrics_port(self, name: str) -> int:
        return self.first_metrics_port + BY_NAME[name].index


PROFILES = {
    "dev": Profile("dev", 8080, 9901, 55432, 56379, 50051, 9101, 59092, 59093, 59042, 59070),
    "test": Profile("test", 18080, 19901, 55532, 56479, 51051, 19101, 59192, 59193, 59142, 59170),
    "bench": Profile("bench", 28080, 29901, 55632, 56579, 52051, 29101, 59292, 59293, 59242, 59270),
    # A fourth mesh for work on the mesh itself (certificates, the gateway) beside the others.
    "work": Profile("work", 38080, 39901, 55732, 56679, 53051, 39101, 59392, 59393, 59342, 59370),
    # A fifth, so that several pieces of work can each have a mesh of their own.
    "aux": Profile("aux", 48080, 49901, 55832, 56779, 54051, 49101, 59492, 59493, 59442, 59470),
}
