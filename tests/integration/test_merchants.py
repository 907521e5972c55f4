"""The merchants service through its gRPC API against the real PostgreSQL, Redis and
wallet service of the test mesh: onboarding and its lifecycle, the settlement wallet,
API keys (authentication, revocation, expiry, rotation with overlap, last use, per-key
rate limits), webhook endpoints, idempotency, hostile and bad input, and a scan proving
that no secret is stored in the merchants database."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from interpay.merchants.v1 import merchants_service_pb2 as pb
from interpay.merchants.v1.merchants_service_pb2_grpc import MerchantsServiceStub
from interpay.transfers.v1 import transfers_service_pb2 as transfers_pb
from interpay.wallet.v1 import wallet_service_pb2 as wallet_pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.framework import peers
from services.framework.db import Database
from services.merchants.adapters.settlement_wallets import SettlementWallets
from services.merchants.domain.model import OnboardMerchant, PayoutAccount
from services.merchants.service_layer.onboarding import Merchants
from tests.conftest import ROOT, database_url
from tests.helpers import rpc_details

ALL_SCOPES = [
    pb.API_KEY_SCOPE_PAYMENTS_WRITE,
    pb.API_KEY_SCOPE_REFUNDS_WRITE,
    pb.API_KEY_SCOPE_REPORTS_READ,
]


@pytest.fixture(scope="module")
def merchants(channel: Callable[..., grpc.Channel]) -> MerchantsServiceStub:
    # As the payments service: the only identity the allowlist admits to both internal RPCs.
    return MerchantsServiceStub(channel("merchants", "payments"))


@pytest.fixture(scope="module")
def wallet(channel: Callable[[str], grpc.Channel]) -> WalletServiceStub:
    return WalletServiceStub(channel("wallet"))


@pytest.fixture
def merchants_db(profile, mesh_secrets) -> Iterator[psycopg.Connection[Any]]:  # type: ignore[no-untyped-def]
    with psycopg.connect(database_url(profile, mesh_secrets, "merchants"), autocommit=True) as conn:
        yield conn


def merchant_request(**overrides: Any) -> pb.CreateMerchantRequest:
    fields: dict[str, Any] = {
        "legal_name": f"Shop {uuid.uuid4()} GmbH",
        "display_name": "Shop",
        "contact_email": "ops@shop.example",
        "country_code": "DE",
        "settlement_currency": "EUR",
        "payout_account": transfers_pb.ExternalAccount(
            holder_name="Shop GmbH", iban="DE89370400440532013000", country_code="DE"
        ),
        "fee_bps": 290,
    }
    fields.update(overrides)
    return pb.CreateMerchantRequest(**fields)


def create_merchant(stub: MerchantsServiceStub, key: str | None = None, **overrides: Any) -> pb.Merchant:
    metadata = (("idempotency-key", key),) if key else None
    return stub.CreateMerchant(merchant_request(**overrides), metadata=metadata, timeout=10).merchant  # type: ignore[no-any-return]


def active_merchant(stub: MerchantsServiceStub) -> pb.Merchant:
    merchant = create_merchant(stub)
    return stub.ActivateMerchant(  # type: ignore[no-any-return]
        pb.ActivateMerchantRequest(merchant_id=merchant.merchant_id), timeout=10
    ).merchant


def create_key(
    stub: MerchantsServiceStub,
    merchant_id: str,
    rate_limit: int = 0,
    expire_in: timedelta | None = None,
    scopes: list[int] | None = None,
) -> tuple[pb.ApiKey, str]:
    request = pb.CreateApiKeyRequest(
        merchant_id=merchant_id, scopes=scopes or ALL_SCOPES, rate_limit_per_minute=rate_limit
    )
    if expire_in is not None:
        request.expire_time.FromDatetime(datetime.now(UTC) + expire_in)
    reply = stub.CreateApiKey(request, timeout=10)
    return reply.api_key, reply.secret


def authenticate(stub: MerchantsServiceStub, public_id: str, secret: str) -> pb.AuthenticateApiKeyResponse:
    return stub.AuthenticateApiKey(  # type: ignore[no-any-return]
        pb.AuthenticateApiKeyRequest(public_id=public_id, secret=secret), timeout=10
    )


def refusal(call: Callable[[], object], code: grpc.StatusCode, reason: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    info, _ = rpc_details(err.value)
    assert info is not None and info.reason == reason, info
    assert info.domain == "merchants.interpay.dev"
    return err.value


def poll(check: Callable[[], bool], what: str, deadline_seconds: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {deadline_seconds} s: {what}")
        time.sleep(0.2)


def refused_now(stub: MerchantsServiceStub, public_id: str, secret: str) -> bool:
    try:
        authenticate(stub, public_id, secret)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
        return True
    return False


def audit_actions(conn: psycopg.Connection[Any], subject_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT action FROM merchant_audit_log WHERE subject_id = %s ORDER BY audit_id", (subject_id,)
    ).fetchall()
    return [r[0] for r in rows]


def tables_containing(conn: psycopg.Connection[Any], needle: str) -> list[str]:
    """The merchants database's tables with a row whose text form holds `needle`, in
    clear or as the hex of its bytes (how a bytea column prints)."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT quote_ident(table_name) FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        ).fetchall()
    ]
    assert {"merchants", "merchant_api_keys", "webhook_endpoints", "merchant_audit_log"} <= set(tables)
    found = []
    for table in tables:
        row = conn.execute(
            f"SELECT count(*) FROM {table} t WHERE strpos(t::text, %s) > 0 OR strpos(t::text, %s) > 0",
            (needle, needle.encode().hex()),
        ).fetchone()
        if row and row[0]:
            found.append(table)
    return found


# -- onboarding --------------------------------------------------------------------------


def test_onboarding_opens_the_settlement_wallet_and_walks_the_lifecycle(  # type: ignore[no-untyped-def]
    merchants: MerchantsServiceStub, wallet: WalletServiceStub, merchants_db
) -> None:
    created = create_merchant(merchants, settlement_currency="SEK", fee_bps=150)
    assert created.state == pb.Merchant.STATE_PENDING
    assert created.settlement_currency == "SEK" and created.fee_bps == 150
    assert created.payout_account.iban == "DE89370400440532013000"
    opened = wallet.GetWallet(wallet_pb.GetWalletRequest(wallet_id=created.settlement_wallet_id), timeout=10)
    assert opened.wallet.owner_type == wallet_pb.OWNER_TYPE_MERCHANT
    assert opened.wallet.owner_id == created.merchant_id and opened.wallet.currency == "SEK"

    merchant_id = created.merchant_id
    activated = merchants.ActivateMerchant(
        pb.ActivateMerchantRequest(merchant_id=merchant_id), timeout=10
    ).merchant
    assert activated.state == pb.Merchant.STATE_ACTIVE
    assert activated.settlement_wallet_id == created.settlement_wallet_id
    again = merchants.ActivateMerchant(
        pb.ActivateMerchantRequest(merchant_id=merchant_id), timeout=10
    ).merchant
    assert again == activated  # activating an ACTIVE merchant changes nothing
    listed = wallet.ListWallets(
        wallet_pb.ListWalletsRequest(owner_type=wallet_pb.OWNER_TYPE_MERCHANT, owner_id=merchant_id),
        timeout=10,
    )
    assert [w.wallet_id for w in listed.wallets] == [created.settlement_wallet_id]

    for_payment = merchants.GetMerchantForPayment(
        pb.GetMerchantForPaymentRequest(merchant_id=merchant_id), timeout=10
    )
    assert (for_payment.state, for_payment.settlement_wallet_id, for_payment.settlement_currency) == (
        pb.Merchant.STATE_ACTIVE,
        created.settlement_wallet_id,
        "SEK",
    )
    assert (for_payment.fee_bps, for_payment.display_name) == (150, "Shop")

    suspended = merchants.SuspendMerchant(
        pb.SuspendMerchantRequest(merchant_id=merchant_id, reason="chargebacks"), timeout=10
    ).merchant
    assert (suspended.state, suspended.suspend_reason) == (pb.Merchant.STATE_SUSPENDED, "chargebacks")
    assert (
        merchants.SuspendMerchant(
            pb.SuspendMerchantRequest(merchant_id=merchant_id, reason="again"), timeout=10
        ).merchant
        == suspended
    )
    assert (
        merchants.GetMerchantForPayment(
            pb.GetMerchantForPaymentRequest(merchant_id=merchant_id), timeout=10
        ).state
        == pb.Merchant.STATE_SUSPENDED
    )
    reactivated = merchants.ActivateMerchant(
        pb.ActivateMerchantRequest(merchant_id=merchant_id), timeout=10
    ).merchant
    assert (reactivated.state, reactivated.suspend_reason) == (pb.Merchant.STATE_ACTIVE, "")
    assert (
        merchants.GetMerchant(pb.GetMerchantRequest(merchant_id=merchant_id), timeout=10).merchant
        == reactivated
    )
    assert audit_actions(merchants_db, merchant_id) == [
        "ONBOARDED",
        "SETTLEMENT_WALLET_OPENED",
        "ACTIVATED",
        "SUSPENDED",
        "ACTIVATED",
    ]


async def test_onboarding_survives_an_unreachable_wallet_service_and_the_repair_job_opens_it(  # type: ignore[no-untyped-def]
    profile, mesh_secrets, merchants: MerchantsServiceStub, wallet: WalletServiceStub
) -> None:
    # The onboarding use case, run here against the real merchants database with a wallet
    # service that cannot be reached (nothing listens on port 1).
    db = Database(database_url(profile, mesh_secrets, "merchants"), None, max_size=2)
    await db.pool.open(wait=True)
    nowhere = peers.channel("127.0.0.1:1", deadline_seconds=2)
    try:
        onboarding = Merchants(db, SettlementWallets(WalletServiceStub(nowhere)))
        account = PayoutAccount("Shop GmbH", "DE", iban="DE89370400440532013000")
        merchant = await onboarding.onboard(
            OnboardMerchant(
                f"Offline {uuid.uuid4()}", "Offline", "ops@shop.example", "DE", "NOK", account, 0
            ),
            None,
        )
    finally:
        await nowhere.close()
        await db.close()
    # Committed and answered, not refused after the fact: a retry would onboard it twice.
    assert merchant.settlement_wallet_id is None
    merchant_id = str(merchant.merchant_id)
    # The running service's repair job opens the wallet once the merchant is old enough.
    poll(
        lambda: (
            merchants.GetMerchant(
                pb.GetMerchantRequest(merchant_id=merchant_id), timeout=10
            ).merchant.settlement_wallet_id
            != ""
        ),
        "the repair job opens the settlement wallet",
        deadline_seconds=60,
    )
    repaired = merchants.GetMerchant(pb.GetMerchantRequest(merchant_id=merchant_id), timeout=10).merchant
    opened = wallet.GetWallet(wallet_pb.GetWalletRequest(wallet_id=repaired.settlement_wallet_id), timeout=10)
    assert (opened.wallet.owner_id, opened.wallet.currency) == (merchant_id, "NOK")
    assert repaired.state == pb.Merchant.STATE_PENDING


def test_an_illegal_transition_names_the_state_and_changes_nothing(  # type: ignore[no-untyped-def]
    merchants: MerchantsServiceStub, merchants_db
) -> None:
    pending = create_merchant(merchants)
    err = refusal(
        lambda: merchants.SuspendMerchant(
            pb.SuspendMerchantRequest(merchant_id=pending.merchant_id, reason="x"), timeout=10
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert "PENDING" in (err.details() or "")
    info, _ = rpc_details(err)
    assert info is not None and info.metadata["state"] == "PENDING"
    assert info.metadata["requested_state"] == "SUSPENDED"
    assert (
        merchants.GetMerchant(pb.GetMerchantRequest(merchant_id=pending.merchant_id), timeout=10).merchant
        == pending
    )
    assert audit_actions(merchants_db, pending.merchant_id) == ["ONBOARDED", "SETTLEMENT_WALLET_OPENED"]


def test_an_unknown_merchant_is_not_found(merchants: MerchantsServiceStub) -> None:
    unknown = str(uuid.uuid4())
    for call in (
        lambda: merchants.GetMerchant(pb.GetMerchantRequest(merchant_id=unknown), timeout=10),
        lambda: merchants.ActivateMerchant(pb.ActivateMerchantRequest(merchant_id=unknown), timeout=10),
        lambda: merchants.SuspendMerchant(
            pb.SuspendMerchantRequest(merchant_id=unknown, reason="x"), timeout=10
        ),
        lambda: merchants.GetMerchantForPayment(
            pb.GetMerchantForPaymentRequest(merchant_id=unknown), timeout=10
        ),
        lambda: create_key(merchants, unknown),
        lambda: merchants.ListApiKeys(pb.ListApiKeysRequest(merchant_id=unknown), timeout=10),
        lambda: merchants.ListWebhookEndpoints(
            pb.ListWebhookEndpointsRequest(merchant_id=unknown), timeout=10
        ),
    ):
        refusal(call, grpc.StatusCode.NOT_FOUND, "MERCHANT_NOT_FOUND")


def test_create_merchant_is_idempotent_on_its_key(merchants: MerchantsServiceStub) -> None:
    key = str(uuid.uuid4())
    request = merchant_request()
    metadata = (("idempotency-key", key),)
    first = merchants.CreateMerchant(request, metadata=metadata, timeout=10).merchant
    assert merchants.CreateMerchant(request, metadata=metadata, timeout=10).merchant == first
    refusal(
        lambda: merchants.CreateMerchant(merchant_request(), metadata=metadata, timeout=10),
        grpc.StatusCode.FAILED_PRECONDITION,
        "IDEMPOTENCY_MISMATCH",
    )


def test_merchants_are_listed_by_state_a_page_at_a_time(merchants: MerchantsServiceStub) -> None:
    mine = {active_merchant(merchants).merchant_id for _ in range(3)}
    seen: set[str] = set()
    token = ""
    for _ in range(10_000):
        page = merchants.ListMerchants(
            pb.ListMerchantsRequest(state=pb.Merchant.STATE_ACTIVE, page_size=50, page_token=token),
            timeout=10,
        )
        assert all(m.state == pb.Merchant.STATE_ACTIVE for m in page.merchants)
        seen |= {m.merchant_id for m in page.merchants}
        token = page.next_page_token
        if not token:
            break
    assert mine <= seen
    err = refusal(
        lambda: merchants.ListApiKeys(
            pb.ListApiKeysRequest(merchant_id=next(iter(mine)), page_token="bm90IGEgdG9rZW4"), timeout=10
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert [v.field for v in rpc_details(err)[1]] == ["page_token"]


# -- API keys ----------------------------------------------------------------------------


def test_a_key_authenticates_with_its_scopes_and_records_its_last_use(
    merchants: MerchantsServiceStub,
) -> None:
    merchant = active_merchant(merchants)
    key, secret = create_key(merchants, merchant.merchant_id)
    assert key.public_id.startswith("ipk_") and secret.startswith("isk_") and len(secret) > 40
    assert key.state == pb.ApiKey.STATE_ACTIVE and not key.HasField("last_used_time")
    assert key.rate_limit_per_minute == 1000  # the platform default

    ok = authenticate(merchants, key.public_id, secret)
    assert (ok.merchant_id, ok.key_id) == (merchant.merchant_id, key.key_id)
    assert list(ok.scopes) == ALL_SCOPES and ok.rate_limit_per_minute == 1000

    listed = merchants.ListApiKeys(pb.ListApiKeysRequest(merchant_id=merchant.merchant_id), timeout=10)
    assert [k.key_id for k in listed.api_keys] == [key.key_id]
    assert secret.encode() not in listed.SerializeToString()
    used = listed.api_keys[0].last_used_time.ToDatetime(tzinfo=UTC)
    assert abs(used - datetime.now(UTC)) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("public_id", "secret"),
    [
        ("mine", "wrong"),  # the right public id, a wrong secret
        ("ipk_000000000000000000000000", "mine"),  # an unknown public id, the right secret
        ("not a key at all", "mine"),
        ("ipk_' OR '1'='1", "' OR '1'='1"),
    ],
)
def test_wrong_credentials_are_unauthenticated(merchants: MerchantsServiceStub, public_id, secret) -> None:  # type: ignore[no-untyped-def]
    merchant = active_merchant(merchants)
    key, real_secret = create_key(merchants, merchant.merchant_id)
    public_id = key.public_id if public_id == "mine" else public_id
    secret = real_secret if secret == "mine" else secret
    err = refusal(
        lambda: authenticate(merchants, public_id, secret),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    assert real_secret not in (err.details() or "")
    assert authenticate(merchants, key.public_id, real_secret).key_id == key.key_id


def test_an_empty_credential_is_invalid_argument(merchants: MerchantsServiceStub) -> None:
    err = refusal(
        lambda: authenticate(merchants, "", ""), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"
    )
    assert {v.field for v in rpc_details(err)[1]} == {"public_id", "secret"}


def test_keys_and_endpoints_are_listed_a_page_at_a_time(merchants: MerchantsServiceStub) -> None:
    merchant = active_merchant(merchants)
    keys = [create_key(merchants, merchant.merchant_id)[0].key_id for _ in range(3)]
    first = merchants.ListApiKeys(
        pb.ListApiKeysRequest(merchant_id=merchant.merchant_id, page_size=2), timeout=10
    )
    assert first.next_page_token
    second = merchants.ListApiKeys(
        pb.ListApiKeysRequest(
            merchant_id=merchant.merchant_id, page_size=2, page_token=first.next_page_token
        ),
        timeout=10,
    )
    assert [k.key_id for k in [*first.api_keys, *second.api_keys]] == keys[::-1]  # newest first
    assert second.next_page_token == ""

    endpoints = [
        merchants.CreateWebhookEndpoint(
            pb.CreateWebhookEndpointRequest(
                merchant_id=merchant.merchant_id,
                url=f"https://hooks.shop.example/{n}",
                event_types=["interpay.payments.v1.PaymentCaptured"],
            ),
            timeout=10,
        ).webhook_endpoint.endpoint_id
        for n in range(3)
    ]
    page = merchants.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(merchant_id=merchant.merchant_id, page_size=2), timeout=10
    )
    rest = merchants.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(
            merchant_id=merchant.merchant_id, page_size=2, page_token=page.next_page_token
        ),
        timeout=10,
    )
    assert [
        e.endpoint_id for e in [*page.webhook_endpoints, *rest.webhook_endpoints]
    ] == endpoints  # oldest first
    # A token is refused by another merchant's listing.
    other = active_merchant(merchants)
    refusal(
        lambda: merchants.ListApiKeys(
            pb.ListApiKeysRequest(merchant_id=other.merchant_id, page_token=first.next_page_token), timeout=10
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )


def test_a_revoked_key_is_refused_at_once(merchants: MerchantsServiceStub, merchants_db) -> None:  # type: ignore[no-untyped-def]
    merchant = active_merchant(merchants)
    key, secret = create_key(merchants, merchant.merchant_id)
    authenticate(merchants, key.public_id, secret)
    revoked = merchants.RevokeApiKey(
        pb.RevokeApiKeyRequest(merchant_id=merchant.merchant_id, key_id=key.key_id), timeout=10
    ).api_key
    assert revoked.state == pb.ApiKey.STATE_REVOKED
    refusal(
        lambda: authenticate(merchants, key.public_id, secret),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    again = merchants.RevokeApiKey(
        pb.RevokeApiKeyRequest(merchant_id=merchant.merchant_id, key_id=key.key_id), timeout=10
    ).api_key
    assert again == revoked
    assert audit_actions(merchants_db, key.key_id) == ["CREATED", "REVOKED"]
    refusal(
        lambda: merchants.RevokeApiKey(
            pb.RevokeApiKeyRequest(merchant_id=merchant.merchant_id, key_id=str(uuid.uuid4())), timeout=10
        ),
        grpc.StatusCode.NOT_FOUND,
        "API_KEY_NOT_FOUND",
    )
    # A key is managed only through its own merchant.
    other = active_merchant(merchants)
    refusal(
        lambda: merchants.RevokeApiKey(
            pb.RevokeApiKeyRequest(merchant_id=other.merchant_id, key_id=key.key_id), timeout=10
        ),
        grpc.StatusCode.NOT_FOUND,
        "API_KEY_NOT_FOUND",
    )


def test_an_expired_key_is_refused(merchants: MerchantsServiceStub) -> None:
    merchant = active_merchant(merchants)
    key, secret = create_key(merchants, merchant.merchant_id, expire_in=timedelta(seconds=2))
    assert key.HasField("expire_time")
    authenticate(merchants, key.public_id, secret)
    poll(lambda: refused_now(merchants, key.public_id, secret), "the key expires")
    err = refusal(
        lambda: authenticate(merchants, key.public_id, secret),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    assert rpc_details(err)[0].metadata["key_state"] == "EXPIRED"  # type: ignore[union-attr]
    listed = merchants.ListApiKeys(pb.ListApiKeysRequest(merchant_id=merchant.merchant_id), timeout=10)
    assert listed.api_keys[0].state == pb.ApiKey.STATE_EXPIRED
    past = Timestamp()
    past.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    err = refusal(
        lambda: merchants.CreateApiKey(
            pb.CreateApiKeyRequest(merchant_id=merchant.merchant_id, scopes=ALL_SCOPES, expire_time=past),
            timeout=10,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert [v.field for v in rpc_details(err)[1]] == ["expire_time"]


def test_rotation_keeps_the_old_key_working_until_the_overlap_ends(  # type: ignore[no-untyped-def]
    merchants: MerchantsServiceStub, merchants_db
) -> None:
    merchant = active_merchant(merchants)
    old, old_secret = create_key(merchants, merchant.merchant_id, rate_limit=500)
    rotated = merchants.RotateApiKey(
        pb.RotateApiKeyRequest(
            merchant_id=merchant.merchant_id, key_id=old.key_id, overlap=Duration(seconds=3)
        ),
        timeout=10,
    )
    new, new_secret = rotated.api_key, rotated.secret
    assert new.key_id != old.key_id and new.public_id != old.public_id and new_secret
    assert list(new.scopes) == list(old.scopes) and new.rate_limit_per_minute == 500
    assert rotated.previous_api_key.state == pb.ApiKey.STATE_ACTIVE
    overlap_end = rotated.previous_api_key.expire_time.ToDatetime(tzinfo=UTC)
    assert timedelta(0) < overlap_end - datetime.now(UTC) <= timedelta(seconds=3)

    assert authenticate(merchants, new.public_id, new_secret).key_id == new.key_id
    assert authenticate(merchants, old.public_id, old_secret).key_id == old.key_id  # within the overlap
    refusal(  # a key is rotated once; rotate its successor instead
        lambda: merchants.RotateApiKey(
            pb.RotateApiKeyRequest(merchant_id=merchant.merchant_id, key_id=old.key_id), timeout=10
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    poll(lambda: refused_now(merchants, old.public_id, old_secret), "the overlap ends")
    assert authenticate(merchants, new.public_id, new_secret).key_id == new.key_id
    assert audit_actions(merchants_db, old.key_id) == ["CREATED", "ROTATED"]


def test_rotation_without_overlap_revokes_the_old_key_at_once(merchants: MerchantsServiceStub) -> None:
    merchant = active_merchant(merchants)
    old, old_secret = create_key(merchants, merchant.merchant_id)
    rotated = merchants.RotateApiKey(
        pb.RotateApiKeyRequest(merchant_id=merchant.merchant_id, key_id=old.key_id), timeout=10
    )
    assert rotated.previous_api_key.state == pb.ApiKey.STATE_REVOKED
    refusal(
        lambda: authenticate(merchants, old.public_id, old_secret),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    assert authenticate(merchants, rotated.api_key.public_id, rotated.secret).key_id == rotated.api_key.key_id
    refusal(
        lambda: merchants.RotateApiKey(
            pb.RotateApiKeyRequest(merchant_id=merchant.merchant_id, key_id=old.key_id), timeout=10
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )


def test_a_replayed_create_returns_the_key_without_its_secret(merchants: MerchantsServiceStub) -> None:
    merchant = active_merchant(merchants)
    request = pb.CreateApiKeyRequest(merchant_id=merchant.merchant_id, scopes=ALL_SCOPES)
    metadata = (("idempotency-key", str(uuid.uuid4())),)
    first = merchants.CreateApiKey(request, metadata=metadata, timeout=10)
    replay = merchants.CreateApiKey(request, metadata=metadata, timeout=10)
    assert first.secret and replay.secret == ""
    assert replay.api_key.key_id == first.api_key.key_id
    listed = merchants.ListApiKeys(pb.ListApiKeysRequest(merchant_id=merchant.merchant_id), timeout=10)
    assert len(listed.api_keys) == 1


def test_replayed_rotations_and_endpoints_return_no_secret(merchants: MerchantsServiceStub) -> None:
    merchant = active_merchant(merchants)
    key, _ = create_key(merchants, merchant.merchant_id)
    rotate = pb.RotateApiKeyRequest(
        merchant_id=merchant.merchant_id, key_id=key.key_id, overlap=Duration(seconds=60)
    )
    metadata = (("idempotency-key", str(uuid.uuid4())),)
    first = merchants.RotateApiKey(rotate, metadata=metadata, timeout=10)
    replay = merchants.RotateApiKey(rotate, metadata=metadata, timeout=10)
    assert first.secret and replay.secret == ""
    assert replay.api_key.key_id == first.api_key.key_id
    assert replay.previous_api_key.key_id == key.key_id
    assert (
        len(
            merchants.ListApiKeys(
                pb.ListApiKeysRequest(merchant_id=merchant.merchant_id), timeout=10
            ).api_keys
        )
        == 2
    )

    create = pb.CreateWebhookEndpointRequest(
        merchant_id=merchant.merchant_id,
        url="https://hooks.shop.example/replay",
        event_types=["interpay.payments.v1.PaymentCaptured"],
    )
    metadata = (("idempotency-key", str(uuid.uuid4())),)
    made = merchants.CreateWebhookEndpoint(create, metadata=metadata, timeout=10)
    again = merchants.CreateWebhookEndpoint(create, metadata=metadata, timeout=10)
    assert made.signing_secret and again.signing_secret == ""
    assert again.webhook_endpoint == made.webhook_endpoint
    create.description = "another request"
    refusal(
        lambda: merchants.CreateWebhookEndpoint(create, metadata=metadata, timeout=10),
        grpc.StatusCode.FAILED_PRECONDITION,
        "IDEMPOTENCY_MISMATCH",
    )


def test_concurrent_creates_under_one_key_create_one_and_concurrent_rotations_rotate_once(
    merchants: MerchantsServiceStub,
) -> None:
    merchant = active_merchant(merchants)
    request = pb.CreateApiKeyRequest(merchant_id=merchant.merchant_id, scopes=ALL_SCOPES)
    metadata = (("idempotency-key", str(uuid.uuid4())),)
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(lambda _: merchants.CreateApiKey(request, metadata=metadata, timeout=10), range(8))
        )
    assert len({r.api_key.key_id for r in replies}) == 1
    assert sum(1 for r in replies if r.secret) == 1  # the secret is shown once

    key_id = replies[0].api_key.key_id

    def rotate(_: int) -> str:
        try:
            merchants.RotateApiKey(
                pb.RotateApiKeyRequest(
                    merchant_id=merchant.merchant_id, key_id=key_id, overlap=Duration(seconds=60)
                ),
                timeout=10,
            )
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            return "refused"
        return "rotated"

    with ThreadPoolExecutor(6) as pool:
        outcomes = sorted(pool.map(rotate, range(6)))
    assert outcomes == ["refused"] * 5 + ["rotated"]
    listed = merchants.ListApiKeys(pb.ListApiKeysRequest(merchant_id=merchant.merchant_id), timeout=10)
    assert len(listed.api_keys) == 2


def test_keys_of_a_merchant_not_active_are_permission_denied(merchants: MerchantsServiceStub) -> None:
    pending = create_merchant(merchants)
    key, secret = create_key(merchants, pending.merchant_id)
    err = refusal(
        lambda: authenticate(merchants, key.public_id, secret),
        grpc.StatusCode.PERMISSION_DENIED,
        "INVALID_STATE",
    )
    assert rpc_details(err)[0].metadata["state"] == "PENDING"  # type: ignore[union-attr]
    merchants.ActivateMerchant(pb.ActivateMerchantRequest(merchant_id=pending.merchant_id), timeout=10)
    authenticate(merchants, key.public_id, secret)
    merchants.SuspendMerchant(
        pb.SuspendMerchantRequest(merchant_id=pending.merchant_id, reason="fraud"), timeout=10
    )
    refusal(
        lambda: authenticate(merchants, key.public_id, secret),
        grpc.StatusCode.PERMISSION_DENIED,
        "INVALID_STATE",
    )


def test_the_rate_limit_is_per_key_with_a_retry_hint(merchants: MerchantsServiceStub) -> None:
    merchant = active_merchant(merchants)
    limited, limited_secret = create_key(merchants, merchant.merchant_id, rate_limit=3)
    other, other_secret = create_key(merchants, merchant.merchant_id, rate_limit=3)
    # Wrong secrets do not use up the key's quota.
    for _ in range(5):
        refusal(
            lambda: authenticate(merchants, limited.public_id, "isk_wrong"),
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )
    for _ in range(3):
        authenticate(merchants, limited.public_id, limited_secret)
    err = refusal(
        lambda: authenticate(merchants, limited.public_id, limited_secret),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
    )
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    hints = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(hints) == 1
    retry = error_details_pb2.RetryInfo()
    hints[0].Unpack(retry)
    delay = retry.retry_delay.ToTimedelta()
    # Three a minute: the next call passes once a third of a minute has been earned back.
    assert timedelta(0) < delay <= timedelta(seconds=20)
    info, _ = rpc_details(err)
    assert info is not None and 0 < int(info.metadata["retry_after_ms"]) <= 20_000
    # Another key of the same merchant has its own budget.
    for _ in range(3):
        authenticate(merchants, other.public_id, other_secret)


def test_no_secret_is_stored_in_the_merchants_database_or_logged(  # type: ignore[no-untyped-def]
    merchants: MerchantsServiceStub, merchants_db, profile
) -> None:
    merchant = active_merchant(merchants)
    key, secret = create_key(merchants, merchant.merchant_id)
    authenticate(merchants, key.public_id, secret)
    rotated = merchants.RotateApiKey(
        pb.RotateApiKeyRequest(
            merchant_id=merchant.merchant_id, key_id=key.key_id, overlap=Duration(seconds=60)
        ),
        timeout=10,
    )
    endpoint = merchants.CreateWebhookEndpoint(
        pb.CreateWebhookEndpointRequest(
            merchant_id=merchant.merchant_id,
            url="https://hooks.shop.example/interpay",
            event_types=["interpay.payments.v1.PaymentCaptured"],
        ),
        timeout=10,
    )
    secrets = [secret, rotated.secret, endpoint.signing_secret]
    assert all(len(s) > 40 for s in secrets)
    for stored in secrets:
        assert tables_containing(merchants_db, stored) == [], "a secret is stored in clear"
        assert tables_containing(merchants_db, stored.split("_", 1)[1]) == []
    logs = [f for f in (ROOT / ".data" / profile.name / "logs").rglob("*") if f.is_file()]
    assert logs
    for log in logs:
        content = log.read_bytes()
        assert not [s for s in secrets if s.encode() in content], f"a secret was logged in {log}"
    # The scan reads real rows: the public ids and the endpoint are there.
    assert "merchant_api_keys" in tables_containing(merchants_db, rotated.api_key.public_id)
    assert "webhook_endpoints" in tables_containing(merchants_db, endpoint.webhook_endpoint.endpoint_id)


# -- webhook endpoints -------------------------------------------------------------------


def test_webhook_endpoints_are_created_listed_and_deleted(
    merchants: MerchantsServiceStub, merchants_db
) -> None:  # type: ignore[no-untyped-def]
    merchant = active_merchant(merchants)
    created = merchants.CreateWebhookEndpoint(
        pb.CreateWebhookEndpointRequest(
            merchant_id=merchant.merchant_id,
            url="https://hooks.shop.example/interpay",
            event_types=["interpay.payments.v1.PaymentCaptured", "interpay.payments.v1.RefundCompleted"],
            description="orders",
        ),
        timeout=10,
    )
    endpoint = created.webhook_endpoint
    assert created.signing_secret.startswith("whsec_")
    second = merchants.CreateWebhookEndpoint(
        pb.CreateWebhookEndpointRequest(
            merchant_id=merchant.merchant_id,
            url="http://127.0.0.1:9999/hook",
            event_types=["interpay.wallet.v1.WalletFunded"],
        ),
        timeout=10,
    ).webhook_endpoint
    listed = merchants.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(merchant_id=merchant.merchant_id), timeout=10
    )
    assert list(listed.webhook_endpoints) == [endpoint, second]  # oldest first
    assert created.signing_secret.encode() not in listed.SerializeToString()
    sealed = merchants_db.execute(
        "SELECT signing_secret FROM webhook_endpoints WHERE endpoint_id = %s", (endpoint.endpoint_id,)
    ).fetchone()
    assert sealed is not None and sealed[0] is not None  # kept (encrypted) so deliveries can be signed

    delete = pb.DeleteWebhookEndpointRequest(
        merchant_id=merchant.merchant_id, endpoint_id=endpoint.endpoint_id
    )
    merchants.DeleteWebhookEndpoint(delete, timeout=10)
    merchants.DeleteWebhookEndpoint(delete, timeout=10)  # already gone: succeeds
    listed = merchants.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(merchant_id=merchant.merchant_id), timeout=10
    )
    assert list(listed.webhook_endpoints) == [second]
    wiped = merchants_db.execute(
        "SELECT signing_secret FROM webhook_endpoints WHERE endpoint_id = %s", (endpoint.endpoint_id,)
    ).fetchone()
    assert wiped == (None,)
    assert audit_actions(merchants_db, endpoint.endpoint_id) == ["CREATED", "DELETED"]
    refusal(
        lambda: merchants.DeleteWebhookEndpoint(
            pb.DeleteWebhookEndpointRequest(merchant_id=merchant.merchant_id, endpoint_id=str(uuid.uuid4())),
            timeout=10,
        ),
        grpc.StatusCode.NOT_FOUND,
        "WEBHOOK_ENDPOINT_NOT_FOUND",
    )


@pytest.mark.parametrize(
    ("url", "event_types", "field"),
    [
        ("http://hooks.shop.example/x", ["interpay.payments.v1.PaymentCaptured"], "url"),  # not https
        ("https://user:pw@hooks.shop.example/x", ["interpay.payments.v1.PaymentCaptured"], "url"),
        ("javascript:alert(1)", ["interpay.payments.v1.PaymentCaptured"], "url"),
        ("https://hooks.shop.example/x", [], "event_types"),
        ("https://hooks.shop.example/x", ["payment.captured"], "event_types[0]"),
        ("https://hooks.shop.example/x", ["interpay.nosuchservice.v1.Thing"], "event_types[0]"),
    ],
)
def test_a_bad_webhook_endpoint_is_invalid_argument(
    merchants: MerchantsServiceStub, url, event_types, field
) -> None:  # type: ignore[no-untyped-def]
    merchant = active_merchant(merchants)
    err = refusal(
        lambda: merchants.CreateWebhookEndpoint(
            pb.CreateWebhookEndpointRequest(
                merchant_id=merchant.merchant_id, url=url, event_types=event_types
            ),
            timeout=10,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert field in [v.field for v in rpc_details(err)[1]]
    listed = merchants.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(merchant_id=merchant.merchant_id), timeout=10
    )
    assert list(listed.webhook_endpoints) == []


# -- hostile and bad input -----------------------------------------------------------------

INJECTIONS = [
    "'; DROP TABLE merchants; --",
    "Robert'); DELETE FROM merchant_api_keys WHERE ('1'='1",
    '" OR 1=1 --',
    "x' UNION SELECT secret_hash FROM merchant_api_keys --",
]


@pytest.mark.parametrize("hostile", INJECTIONS)
def test_sql_in_string_fields_is_stored_as_text(
    merchants: MerchantsServiceStub, merchants_db, hostile
) -> None:  # type: ignore[no-untyped-def]
    merchant = create_merchant(merchants, legal_name=hostile, display_name=hostile[:100])
    assert (merchant.legal_name, merchant.display_name) == (hostile, hostile[:100])
    got = merchants.GetMerchant(pb.GetMerchantRequest(merchant_id=merchant.merchant_id), timeout=10).merchant
    assert got.legal_name == hostile
    endpoint = merchants.CreateWebhookEndpoint(
        pb.CreateWebhookEndpointRequest(
            merchant_id=merchant.merchant_id,
            url="https://hooks.shop.example/x",
            event_types=["interpay.payments.v1.PaymentCaptured"],
            description=hostile,
        ),
        timeout=10,
    ).webhook_endpoint
    assert endpoint.description == hostile
    for table in ("merchants", "merchant_api_keys", "webhook_endpoints"):
        assert merchants_db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] >= 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"contact_email": "not an email"}, {"contact_email"}),
        ({"country_code": "de"}, {"country_code"}),
        ({"settlement_currency": "EURO"}, {"settlement_currency"}),
        ({"fee_bps": 10001}, {"fee_bps"}),
        ({"legal_name": ""}, {"legal_name"}),
        ({"payout_account": None}, {"payout_account"}),
        (
            {
                "payout_account": transfers_pb.ExternalAccount(
                    holder_name="x", iban="not an iban", country_code="DE"
                )
            },
            {"payout_account.iban"},
        ),
        ({"contact_email": "x", "fee_bps": -1}, {"contact_email", "fee_bps"}),
    ],
)
def test_bad_merchant_input_is_invalid_argument_naming_each_field(  # type: ignore[no-untyped-def]
    merchants: MerchantsServiceStub, merchants_db, overrides, fields
) -> None:
    legal_name = overrides.pop("legal_name", f"Bad {uuid.uuid4()}")
    request = merchant_request(legal_name=legal_name, **overrides)
    if "payout_account" in overrides and overrides["payout_account"] is None:
        request.ClearField("payout_account")
    err = refusal(
        lambda: merchants.CreateMerchant(request, timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert {v.field for v in rpc_details(err)[1]} == fields
    if legal_name:
        assert merchants_db.execute(
            "SELECT count(*) FROM merchants WHERE legal_name = %s", (legal_name,)
        ).fetchone() == (0,)


def test_bad_api_key_input_is_invalid_argument(merchants: MerchantsServiceStub) -> None:
    merchant = active_merchant(merchants)
    for request, field in (
        (pb.CreateApiKeyRequest(merchant_id=merchant.merchant_id), "scopes"),
        (
            pb.CreateApiKeyRequest(merchant_id=merchant.merchant_id, scopes=[pb.API_KEY_SCOPE_UNSPECIFIED]),
            "scopes[0]",
        ),
        (
            pb.CreateApiKeyRequest(
                merchant_id=merchant.merchant_id, scopes=ALL_SCOPES, rate_limit_per_minute=100_001
            ),
            "rate_limit_per_minute",
        ),
        (pb.CreateApiKeyRequest(merchant_id="not-a-uuid", scopes=ALL_SCOPES), "merchant_id"),
    ):
        err = refusal(
            lambda r=request: merchants.CreateApiKey(r, timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
        )
        assert field in [v.field for v in rpc_details(err)[1]]
    assert (
        list(
            merchants.ListApiKeys(
                pb.ListApiKeysRequest(merchant_id=merchant.merchant_id), timeout=10
            ).api_keys
        )
        == []
    )
    err = refusal(
        lambda: merchants.RotateApiKey(
            pb.RotateApiKeyRequest(
                merchant_id=merchant.merchant_id,
                key_id=str(uuid.uuid4()),
                overlap=Duration(seconds=8 * 86400),
            ),
            timeout=10,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert [v.field for v in rpc_details(err)[1]] == ["overlap"]


def test_the_settlement_rpcs_answer_over_grpc(merchants: MerchantsServiceStub) -> None:
    # Settlements themselves: tests/integration/test_settlements.py.
    merchant = active_merchant(merchants)
    day = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    run = merchants.RunSettlement(
        pb.RunSettlementRequest(settlement_date=day, merchant_id=merchant.merchant_id), timeout=10
    )
    [settlement] = run.settlements
    assert settlement.settlement_date == day and settlement.net.amount_minor == 0
    assert settlement.state == pb.Settlement.STATE_PAID_OUT and not settlement.payout_id
    listed = merchants.ListSettlements(
        pb.ListSettlementsRequest(merchant_id=merchant.merchant_id), timeout=10
    )
    assert [s.settlement_id for s in listed.settlements] == [settlement.settlement_id]
    got = merchants.GetSettlement(
        pb.GetSettlementRequest(merchant_id=merchant.merchant_id, settlement_id=settlement.settlement_id),
        timeout=10,
    )
    assert got.settlement == settlement
    refusal(
        lambda: merchants.GetSettlement(
            pb.GetSettlementRequest(merchant_id=merchant.merchant_id, settlement_id=str(uuid.uuid4())),
            timeout=10,
        ),
        grpc.StatusCode.NOT_FOUND,
        "SETTLEMENT_NOT_FOUND",
    )


def test_the_internal_rpcs_are_not_reachable_through_the_gateway(gateway) -> None:  # type: ignore[no-untyped-def]
    for rpc in ("AuthenticateApiKey", "GetMerchantForPayment"):
        reply = gateway.post(f"/interpay.merchants.v1.MerchantsService/{rpc}", content=b"")
        assert reply.status_code == 404, rpc
