"""Who may call which public RPC: the one table the edge enforces.

Every public RPC (one with a `google.api.http` rule) passes the framework's
`EdgeAuthInterceptor`, which finds the caller's principal (services/framework/edge_auth.py)
and then asks this table:

- `operator` (the operator certificate, or a JWT with the admin role) and `service` (a peer
  named by its mTLS certificate) may call every public RPC;
- `user` (a JWT from the users service) and `merchant` (an API key) may call only the RPCs
  listed here for them, a merchant only with every scope the entry names;
- an RPC not listed is for operators and services only;
- `OPEN` RPCs need no credential at all (registration, login, session refresh, the JWKS).

`owner_field` names the request field that must be the caller's own id (the user's or the
merchant's): a mismatch is PERMISSION_DENIED, refused whether or not the other id exists,
so nothing leaks. A list whose filter field is left empty gets it filled with the caller's
id. Ownership of a resource named by its own id (a wallet, a payment) cannot be read from
the request: the wallet, payments and transfers handlers check it against the principal
(`edge_auth.current_principal()`) and answer NOT_FOUND for another's.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from services.framework.edge_auth import Kind, Principal
from services.framework.errors import PermissionDenied


@dataclass(frozen=True)
class Grant:
    """What a user or a merchant may do with one RPC."""

    kind: Kind
    scopes: frozenset[str] = frozenset()  # merchants: every one is required
    owner_field: str = ""  # request field that must be the caller's own id
    fill_owner: bool = False  # a list filter: empty means "mine"


@dataclass(frozen=True)
class Rule:
    grants: tuple[Grant, ...] = ()
    open: bool = False  # no credential needed

    def grant(self, kind: Kind) -> Grant | None:
        return next((g for g in self.grants if g.kind is kind), None)


OPEN = Rule(open=True)
PAYMENTS_READ = "payments:read"
PAYMENTS_WRITE = "payments:write"
REFUNDS_WRITE = "refunds:write"
REPORTS_READ = "reports:read"
WEBHOOKS_WRITE = "webhooks:write"


def user(owner_field: str = "", fill_owner: bool = False) -> Grant:
    return Grant(Kind.USER, owner_field=owner_field, fill_owner=fill_owner)


def merchant(*scopes: str, owner_field: str = "", fill_owner: bool = False) -> Grant:
    return Grant(Kind.MERCHANT, frozenset(scopes), owner_field, fill_owner)


def _rules(*grants: Grant) -> Rule:
    return Rule(grants=grants)


# Keyed by the full gRPC service name, then the RPC name.
POLICY: dict[str, dict[str, Rule]] = {
    "interpay.users.v1.UserService": {
        "RegisterUser": OPEN,
        "Login": OPEN,
        "RefreshSession": OPEN,
        "GetJwks": OPEN,
        "Logout": _rules(user()),  # the refresh token itself proves the session
        "RevokeAllSessions": _rules(user("user_id")),
        "GetUser": _rules(user("user_id")),
        "UpdateUserProfile": _rules(user("user_id")),
        "DeleteUser": _rules(user("user_id")),
        "ExportUserData": _rules(user("user_id")),
        "SubmitKycDocument": _rules(user("user_id")),
        "ListKycDocuments": _rules(user("user_id")),
        "GetKycStatus": _rules(user("user_id")),
        # EraseUser and ReviewKycDocument: operators only.
    },
    "interpay.wallet.v1.WalletService": {
        # The wallet handlers check owner_type/owner_id and each wallet's owner.
        "CreateWallet": _rules(user()),
        "GetWallet": _rules(user(), merchant(REPORTS_READ)),
        "ListWallets": _rules(user(), merchant(REPORTS_READ)),
        "ListWalletTransactions": _rules(user(), merchant(REPORTS_READ)),
        # FundWallet (money from the funding account), freezing, closing and
        # reconciliation: operators and services only.
    },
    "interpay.payments.v1.PaymentService": {
        # The payments handlers check each payment's merchant and payer.
        "CreatePayment": _rules(merchant(PAYMENTS_WRITE, owner_field="merchant_id")),
        "GetPayment": _rules(user(), merchant(PAYMENTS_READ)),
        "ListPayments": _rules(merchant(PAYMENTS_READ, owner_field="merchant_id", fill_owner=True)),
        "CapturePayment": _rules(merchant(PAYMENTS_WRITE)),
        "CancelPayment": _rules(merchant(PAYMENTS_WRITE)),
        "RefundPayment": _rules(merchant(REFUNDS_WRITE)),
        "GetRefund": _rules(user(), merchant(PAYMENTS_READ)),
        "ListRefunds": _rules(user(), merchant(PAYMENTS_READ)),
        "ListPaymentTransactions": _rules(user(), merchant(PAYMENTS_READ)),
        "CreatePaymentMethod": _rules(user("user_id")),
        "ListPaymentMethods": _rules(user("user_id")),
        "DeletePaymentMethod": _rules(user("user_id")),
        # ApprovePaymentReview, RejectPaymentReview: operators only.
    },
    "interpay.merchants.v1.MerchantsService": {
        "GetMerchant": _rules(merchant(owner_field="merchant_id")),
        "ListApiKeys": _rules(merchant(owner_field="merchant_id")),
        "CreateWebhookEndpoint": _rules(merchant(WEBHOOKS_WRITE, owner_field="merchant_id")),
        "ListWebhookEndpoints": _rules(merchant(WEBHOOKS_WRITE, owner_field="merchant_id")),
        "DeleteWebhookEndpoint": _rules(merchant(WEBHOOKS_WRITE, owner_field="merchant_id")),
        "ListSettlements": _rules(merchant(REPORTS_READ, owner_field="merchant_id")),
        "GetSettlement": _rules(merchant(REPORTS_READ, owner_field="merchant_id")),
        # Onboarding, activation, suspension, key issue/rotation/revocation and
        # settlement runs: operators only.
    },
    "interpay.vault.v1.VaultService": {
        "TokenizeCard": _rules(user(), merchant(PAYMENTS_WRITE)),
        # GetCard, DeleteCard: operators and services (payments reads card summaries).
    },
    "interpay.notifications.v1.NotificationsService": {
        "ListNotifications": _rules(user("user_id", fill_owner=True)),
        "ListWebhookDeliveries": _rules(merchant(WEBHOOKS_WRITE, owner_field="merchant_id", fill_owner=True)),
    },
    "interpay.transfers.v1.TransfersService": {
        # The transfers handlers check that a user's source wallet is theirs (another's is
        # WALLET_NOT_FOUND) and show a user only the transfers and payouts of their wallets.
        "CreateTransfer": _rules(user()),
        "GetTransfer": _rules(user()),
        "ListTransfers": _rules(user()),
        "CreatePayout": _rules(user()),
        "GetPayout": _rules(user()),
        "ListPayouts": _rules(user()),
        # RecordTransferOutcome, RecordPayoutOutcome: internal (the orchestrator).
    },
    # Fraud administration and saga inspection are operators' work.
    "interpay.fraud.v1.FraudService": {},
    "interpay.orchestrator.v1.OrchestratorService": {},
}

OPERATORS_ONLY = Rule()


def rule(grpc_service: str, rpc: str) -> Rule:
    """The rule of a public RPC; unlisted means operators and services only."""
    return POLICY.get(grpc_service, {}).get(rpc, OPERATORS_ONLY)


def authorize(grpc_service: str, rpc: str, principal: Principal, request: Message) -> None:
    """Refuses `principal` the call unless the table grants it; fills an empty owner
    filter of a list with the caller's own id."""
    if principal.kind in (Kind.OPERATOR, Kind.SERVICE):
        return
    grant = rule(grpc_service, rpc).grant(principal.kind)
    if grant is None:
        raise PermissionDenied(
            f"a {principal.kind} credential may not call {rpc}",
            metadata={"rpc": rpc, "principal_kind": principal.kind.value},
        )
    missing = grant.scopes - principal.scopes
    if missing:
        raise PermissionDenied(
            f"{rpc} needs the API key scope {', '.join(sorted(missing))}",
            reason="INSUFFICIENT_SCOPE",
            metadata={"rpc": rpc, "required_scopes": ",".join(sorted(grant.scopes))},
        )
    if not grant.owner_field:
        return
    named = getattr(request, grant.owner_field)
    if not named and grant.fill_owner:
        setattr(request, grant.owner_field, principal.subject)
    elif named != principal.subject:
        raise PermissionDenied(
            f"{grant.owner_field} must be the caller's own",
            metadata={"rpc": rpc, "field": grant.owner_field},
        )
