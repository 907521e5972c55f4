"""The users service through its gRPC API against the real PostgreSQL, Redis and Cassandra
of the mesh: sessions and refresh-token rotation (Cassandra), optimistic profile updates,
soft deletion, KYC, the GDPR export and erasure, the audit log, the profile cache and
login throttling.

Each test registers its own users and sends its own source address (a unique IPv6
documentation address in `x-forwarded-for`), so throttling counters never leak between
tests, runs, or the other engineers' tests."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import psycopg
import pytest
import redis
from argon2 import PasswordHasher
from cassandra.cluster import Cluster, Session
from cassandra.query import dict_factory
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from interpay.users.v1 import users_service_pb2 as pb
from interpay.users.v1.users_service_pb2_grpc import UserServiceStub
from psycopg.rows import dict_row

from services.users.adapters.login_throttle import LoginThrottle, ThrottlePolicy, account_key, source_key
from tests.conftest import ROOT, database_url
from tests.helpers import rpc_details

PASSWORD = "correct horse battery staple"
POLICY = ThrottlePolicy()
Doc = pb.KycDocument


@pytest.fixture(scope="module")
def users(channel: Callable[..., grpc.Channel]) -> UserServiceStub:
    return UserServiceStub(channel("users"))


@pytest.fixture(scope="module")
def users_as_fraud(channel: Callable[..., grpc.Channel]) -> UserServiceStub:
    """GetUserRiskProfile is internal: the fraud service is one of its two callers."""
    return UserServiceStub(channel("users", "fraud"))


@pytest.fixture(scope="module")
def db(profile, mesh_secrets) -> Iterator[psycopg.Connection[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    with psycopg.connect(
        database_url(profile, mesh_secrets, "users"), autocommit=True, row_factory=dict_row
    ) as conn:
        yield conn


@pytest.fixture(scope="module")
def cql(profile) -> Iterator[Session]:  # type: ignore[no-untyped-def]
    """The `interpay_logs` keyspace, where the sessions are."""
    cluster = Cluster(["127.0.0.1"], port=profile.cassandra_port, connect_timeout=10)
    try:
        session = cluster.connect("interpay_logs")
        session.row_factory = dict_factory
        yield session
    finally:
        cluster.shutdown()


def sessions_of(cql: Session, user_id: str) -> list[dict[str, Any]]:
    return list(cql.execute("SELECT * FROM user_refresh_sessions WHERE user_id = %s", (uuid.UUID(user_id),)))


def token_row(cql: Session, token: str) -> dict[str, Any] | None:
    digest = hashlib.sha256(token.encode()).digest()
    return cql.execute("SELECT * FROM user_refresh_tokens WHERE token_hash = %s", (digest,)).one()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cache(profile) -> Iterator[redis.Redis]:  # type: ignore[no-untyped-def]
    client = redis.Redis(host="127.0.0.1", port=profile.redis_port)
    yield client
    client.close()


def new_source() -> str:
    return str(ipaddress.ip_address(f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"))


def via(source: str) -> tuple[tuple[str, str], ...]:
    return (("x-forwarded-for", source),)


def register(users: UserServiceStub, source: str | None = None, **overrides: Any) -> pb.User:
    tag = uuid.uuid4().hex[:12]
    fields = {
        "email": f"Someone.{tag}@Example.org",
        "phone": f"+44{int(tag, 16) % 10**10:010d}",
        "password": PASSWORD,
        "display_name": "Someone",
        "country_code": "GB",
        **overrides,
    }
    return users.RegisterUser(pb.RegisterUserRequest(**fields), metadata=via(source or new_source())).user


def login(users: UserServiceStub, email: str, source: str, password: str = PASSWORD) -> pb.LoginResponse:
    return users.Login(pb.LoginRequest(email=email, password=password), metadata=via(source))


def refused(call: Callable[[], Any], code: grpc.StatusCode, reason: str) -> error_details_pb2.ErrorInfo:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    info, _ = rpc_details(err.value)
    assert info is not None and info.reason == reason, info
    assert info.domain == "users.interpay.dev"
    return info


def retry_info(exc: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            found = error_details_pb2.RetryInfo()
            detail.Unpack(found)
            return found
    return None


def profile_update(
    user: pb.User, version: int, paths: list[str], **values: str
) -> pb.UpdateUserProfileRequest:
    return pb.UpdateUserProfileRequest(
        user_id=user.user_id,
        profile=pb.UserProfile(**values),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
        expected_version=version,
    )


def audit_rows(db: psycopg.Connection[dict[str, Any]], subject: str) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT actor, action, resource_type, resource_id, host(source_ip) AS source_ip, before, after, "
        "details, redacted_at FROM audit_log WHERE subject_id = %s ORDER BY audit_id",
        (subject,),
    ).fetchall()


# -- registration and credentials -------------------------------------------------------------


def test_registration_refuses_a_taken_email_in_any_case_and_a_taken_phone(
    users: UserServiceStub, db: psycopg.Connection[dict[str, Any]]
) -> None:
    user = register(users)
    refused(lambda: register(users, email=user.email.upper()), grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN")
    refused(lambda: register(users, phone=user.phone), grpc.StatusCode.ALREADY_EXISTS, "PHONE_TAKEN")
    rows = db.execute(
        "SELECT password_hash FROM users WHERE lower(email) = lower(%s) OR phone = %s",
        (user.email, user.phone),
    ).fetchall()
    assert len(rows) == 1  # nothing half-registered
    assert rows[0]["password_hash"].startswith("$argon2id$") and PASSWORD not in rows[0]["password_hash"]


def test_a_hash_with_outdated_parameters_is_upgraded_at_login(
    users: UserServiceStub, db: psycopg.Connection[dict[str, Any]]
) -> None:
    source = new_source()
    user = register(users, source)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    db.execute("UPDATE users SET password_hash = %s WHERE user_id = %s", (weak, user.user_id))
    assert login(users, user.email, source).user_id == user.user_id
    stored = db.execute("SELECT password_hash FROM users WHERE user_id = %s", (user.user_id,)).fetchone()
    assert stored is not None and stored["password_hash"] != weak
    assert not PasswordHasher().check_needs_rehash(stored["password_hash"])
    assert PasswordHasher().verify(stored["password_hash"], PASSWORD)
    assert "user.password_rehashed" in [r["action"] for r in audit_rows(db, user.user_id)]
    assert login(users, user.email, source).user_id == user.user_id


# -- sessions --------------------------------------------------------------------------------


def test_refresh_rotates_the_token_and_stores_only_hashes(users: UserServiceStub, cql: Session) -> None:
    source = new_source()
    user = register(users, source)
    first = login(users, user.email, source)
    assert first.user_id == user.user_id and first.token_type == "Bearer" and first.expires_in_seconds > 0
    second = users.RefreshSession(
        pb.RefreshSessionRequest(refresh_token=first.refresh_token), metadata=via(source)
    )
    assert second.user_id == user.user_id
    assert second.refresh_token != first.refresh_token and second.access_token != first.access_token
    # Both tokens are known by their hashes, as the same session's; the second is current.
    # (The old one stops working, and, being a reuse, ends the session: tested below.)
    (session,) = sessions_of(cql, user.user_id)
    for token in (first.refresh_token, second.refresh_token):
        row = token_row(cql, token)
        assert row is not None and (str(row["user_id"]), row["session_id"]) == (
            user.user_id,
            session["session_id"],
        )
    assert session["current_token_hash"] == hashlib.sha256(second.refresh_token.encode()).digest()
    assert session["revoked"] is False and session["last_refresh_at"] is not None
    assert session["ip_address"] == source and session["user_agent"].startswith("grpc-python/")
    # The session's lifetime is its TTL: every column expires with it (30 days).
    ttl = cql.execute(
        "SELECT TTL(user_agent) AS ua, TTL(current_token_hash) AS hash, TTL(created_at) AS created "
        "FROM user_refresh_sessions WHERE user_id = %s AND session_id = %s",
        (uuid.UUID(user.user_id), session["session_id"]),
    ).one()
    assert ttl is not None and all(29 * 86400 < ttl[k] <= 30 * 86400 for k in ("ua", "hash", "created"))
    dump = json.dumps(
        [
            sessions_of(cql, user.user_id),
            token_row(cql, first.refresh_token),
            token_row(cql, second.refresh_token),
        ],
        default=str,
    )
    assert first.refresh_token not in dump and second.refresh_token not in dump


def test_reusing_a_rotated_refresh_token_revokes_the_whole_session(
    users: UserServiceStub, db: psycopg.Connection[dict[str, Any]], cql: Session
) -> None:
    source = new_source()
    user = register(users, source)
    stolen = login(users, user.email, source).refresh_token
    current = users.RefreshSession(pb.RefreshSessionRequest(refresh_token=stolen)).refresh_token
    refresh = users.RefreshSession
    refused(
        lambda: refresh(pb.RefreshSessionRequest(refresh_token=stolen), metadata=via(source)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    # The legitimate holder's newer token died with the session.
    refused(
        lambda: refresh(pb.RefreshSessionRequest(refresh_token=current)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    assert [(s["revoked"], s["revoked_reason"]) for s in sessions_of(cql, user.user_id)] == [
        (True, "TOKEN_REUSE")
    ]
    revoked = [r for r in audit_rows(db, user.user_id) if r["action"] == "session.revoked"]
    assert len(revoked) == 1 and revoked[0]["details"] == {"reason": "TOKEN_REUSE"}
    assert revoked[0]["source_ip"] == source
    # An unknown token is refused the same way.
    refused(
        lambda: refresh(pb.RefreshSessionRequest(refresh_token="not-a-token")),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )


def test_concurrent_refreshes_of_one_token_issue_one_successor_and_end_the_session(
    users: UserServiceStub, db: psycopg.Connection[dict[str, Any]], cql: Session
) -> None:
    source = new_source()
    user = register(users, source)
    token = login(users, user.email, source).refresh_token
    many = 24

    def refresh(_: int) -> str:
        try:
            return users.RefreshSession(pb.RefreshSessionRequest(refresh_token=token)).refresh_token
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc.details()
            return ""

    with ThreadPoolExecutor(many) as pool:
        successors = [t for t in pool.map(refresh, range(many)) if t]
    # The compare-and-set let exactly one through; the others were reuse, which ended the
    # session, audited once.
    assert len(successors) == 1
    (session,) = sessions_of(cql, user.user_id)
    assert (session["revoked"], session["revoked_reason"]) == (True, "TOKEN_REUSE")
    assert session["current_token_hash"] == hashlib.sha256(successors[0].encode()).digest()
    actions = [r["action"] for r in audit_rows(db, user.user_id)]
    assert (actions.count("session.refreshed"), actions.count("session.revoked")) == (1, 1)
    refused(
        lambda: users.RefreshSession(pb.RefreshSessionRequest(refresh_token=successors[0])),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )


def test_logout_is_idempotent_and_revoke_all_ends_every_open_session(
    users: UserServiceStub, db: psycopg.Connection[dict[str, Any]], cql: Session
) -> None:
    source = new_source()
    user = register(users, source)
    one, two, three = (login(users, user.email, source).refresh_token for _ in range(3))
    users.Logout(pb.LogoutRequest(refresh_token=one))
    users.Logout(pb.LogoutRequest(refresh_token=one))  # already ended: succeeds
    refused(
        lambda: users.RefreshSession(pb.RefreshSessionRequest(refresh_token=one)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    revoked = users.RevokeAllSessions(pb.RevokeAllSessionsRequest(user_id=user.user_id))
    assert revoked.revoked_session_count == 2
    assert (
        users.RevokeAllSessions(pb.RevokeAllSessionsRequest(user_id=user.user_id)).revoked_session_count == 0
    )
    for token in (two, three):
        refused(
            lambda token=token: users.RefreshSession(pb.RefreshSessionRequest(refresh_token=token)),  # type: ignore[misc]
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )
    refused(
        lambda: users.RevokeAllSessions(pb.RevokeAllSessionsRequest(user_id=str(uuid.uuid4()))),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    reasons = sorted(s["revoked_reason"] for s in sessions_of(cql, user.user_id))
    assert reasons == ["LOGOUT", "REVOKE_ALL", "REVOKE_ALL"]
    trail = [(r["action"], r["details"]) for r in audit_rows(db, user.user_id)]
    assert [d["reason"] for a, d in trail if a == "session.revoked"] == ["LOGOUT"]  # once, not twice
    (revoke_all,) = [d for a, d in trail if a == "user.sessions_revoked"]
    assert len(revoke_all["session_ids"]) == 2


# -- profiles, optimistic locking and the cache ----------------------------------------------


def test_a_stale_version_is_aborted_naming_the_current_version_and_changes_nothing(
    users: UserServiceStub, db: psycopg.Connection[dict[str, Any]]
) -> None:
    user = register(users)
    updated = users.UpdateUserProfile(profile_update(user, 1, ["display_name"], display_name="Second")).user
    assert (updated.profile.display_name, updated.profile.version) == ("Second", 2)
    info = refused(
        lambda: users.UpdateUserProfile(profile_update(user, 1, ["display_name"], display_name="Lost")),
        grpc.StatusCode.ABORTED,
        "INVALID_STATE",
    )
    assert info.metadata["current_version"] == "2" and info.metadata["expected_version"] == "1"
    row = db.execute(
        "SELECT display_name, version FROM user_profiles WHERE user_id = %s", (user.user_id,)
    ).fetchone()
    assert row == {"display_name": "Second", "version": 2}


def test_concurrent_updates_of_one_version_never_lose_an_update(
    users: UserServiceStub, db: psycopg.Connection[dict[str, Any]]
) -> None:
    user = register(users)
    names = [f"Writer {i}" for i in range(6)]

    def update(name: str) -> str:
        try:
            users.UpdateUserProfile(profile_update(user, 1, ["display_name"], display_name=name))
            return name
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ABORTED
            return ""

    with ThreadPoolExecutor(len(names)) as pool:
        winners = [w for w in pool.map(update, names) if w]
    assert len(winners) == 1
    row = db.execute(
        "SELECT display_name, version FROM user_profiles WHERE user_id = %s", (user.user_id,)
    ).fetchone()
    assert row == {"display_name": winners[0], "version": 2}


def test_the_update_mask_decides_which_fields_change(users: UserServiceStub) -> None:
    user = register(users)
    # Named fields only: the display name given alongside is ignored.
    after = users.UpdateUserProfile(
        profile_update(user, 1, ["country_code"], country_code="FR", display_name="Ignored")
    ).user
    assert (after.profile.country_code, after.profile.display_name, after.profile.version) == (
        "FR",
        "Someone",
        2,
    )
    # An empty mask changes every field given a value.
    after = users.UpdateUserProfile(profile_update(user, 2, [], preferred_language="pt-BR")).user
    assert (after.profile.preferred_language, after.profile.country_code, after.profile.version) == (
        "pt-BR",
        "FR",
        3,
    )
    refused(
        lambda: users.UpdateUserProfile(profile_update(user, 3, ["email"], display_name="x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )


def test_the_profile_cache_is_never_stale_after_a_commit(
    users: UserServiceStub, db: psycopg.Connection[dict[str, Any]], cache: redis.Redis
) -> None:
    user = register(users)
    key = f"users:user:{user.user_id}"
    cache.delete(key)
    assert users.GetUser(pb.GetUserRequest(user_id=user.user_id)).user.profile.display_name == "Someone"
    writers, version = cache.hmget(key, ["w", "v"])
    assert (int(writers or 0), int(version or 0)) == (
        0,
        db.execute("SELECT version FROM users WHERE user_id = %s", (user.user_id,)).fetchone()["version"],  # type: ignore[index]
    )
    users.UpdateUserProfile(profile_update(user, 1, ["display_name"], display_name="Fresh"))
    assert users.GetUser(pb.GetUserRequest(user_id=user.user_id)).user.profile.display_name == "Fresh"
    assert json.loads(cache.hget(key, "d"))[5] == "Fresh"  # type: ignore[arg-type]
    assert 0 < cache.ttl(key) <= 60
    users.DeleteUser(pb.DeleteUserRequest(user_id=user.user_id))
    assert users.GetUser(pb.GetUserRequest(user_id=user.user_id)).user.state == pb.User.STATE_DELETED


# -- deletion --------------------------------------------------------------------------------


def test_a_deleted_user_cannot_log_in_refresh_or_be_changed(users: UserServiceStub) -> None:
    source = new_source()
    user = register(users, source)
    refresh_token = login(users, user.email, source).refresh_token
    deleted = users.DeleteUser(pb.DeleteUserRequest(user_id=user.user_id)).user
    assert deleted.state == pb.User.STATE_DELETED and deleted.email == user.email  # the record stays
    assert users.DeleteUser(pb.DeleteUserRequest(user_id=user.user_id)).user.state == pb.User.STATE_DELETED
    refused(lambda: login(users, user.email, source), grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    refused(
        lambda: users.RefreshSession(pb.RefreshSessionRequest(refresh_token=refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    refused(
        lambda: users.UpdateUserProfile(profile_update(user, 1, ["display_name"], display_name="Ghost")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    refused(
        lambda: users.SubmitKycDocument(kyc_request(user, Doc.DOCUMENT_TYPE_PASSPORT)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert users.GetUser(pb.GetUserRequest(user_id=user.user_id)).user.profile.display_name == "Someone"
    refused(
        lambda: users.DeleteUser(pb.DeleteUserRequest(user_id=str(uuid.uuid4()))),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )


def test_a_suspended_user_is_refused_only_after_the_right_password(
    users: UserServiceStub, db: psycopg.Connection[dict[str, Any]]
) -> None:
    source = new_source()
    user = register(users, source)
    refresh_token = login(users, user.email, source).refresh_token
    # Suspension has no RPC yet (an administrator's tool); the state is set as it would.
    db.execute("UPDATE users SET state = 'SUSPENDED' WHERE user_id = %s", (user.user_id,))
    refused(lambda: login(users, user.email, source), grpc.StatusCode.PERMISSION_DENIED, "INVALID_STATE")
    refused(
        lambda: login(users, user.email, source, "wrong password!"),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    refused(
        lambda: users.RefreshSession(pb.RefreshSessionRequest(refresh_token=refresh_token)),
        grpc.StatusCode.PERMISSION_DENIED,
        "INVALID_STATE",
    )


# -- KYC -------------------------------------------------------------------------------------


def kyc_request(
    user: pb.User, document_type: int, reference: str | None = None
) -> pb.SubmitKycDocumentRequest:
    return pb.SubmitKycDocumentRequest(
        user_id=user.user_id,
        document=Doc(
            document_type=document_type,  # type: ignore[arg-type]
            document_reference=reference or f"kyc/{uuid.uuid4()}.jpg",
            issuing_country="GB",
        ),
    )


def review(
    users: UserServiceStub, user: pb.User, document_id: str, reason: str = ""
) -> pb.ReviewKycDocumentResponse:
    decision = pb.KYC_DECISION_REJECTED if reason else pb.KYC_DECISION_VERIFIED
    return users.ReviewKycDocument(
        pb.ReviewKycDocumentRequest(
            user_id=user.user_id, document_id=document_id, decision=decision, rejection_reason=reason
        )
    )


def test_kyc_documents_raise_the_level_and_the_limits(
    users: UserServiceStub, users_as_fraud: UserServiceStub
) -> None:
    user = register(users)
    status = users.GetKycStatus(pb.GetKycStatusRequest(user_id=user.user_id)).kyc_status
    assert (status.kyc_level, status.review_pending) == (0, False)
    level0_eur = next(lim for lim in status.limits if lim.per_transaction.currency == "EUR")

    passport = users.SubmitKycDocument(kyc_request(user, Doc.DOCUMENT_TYPE_PASSPORT)).document
    assert passport.state == Doc.STATE_PENDING and not passport.HasField("review_time")
    refused(
        lambda: users.SubmitKycDocument(kyc_request(user, Doc.DOCUMENT_TYPE_PASSPORT)),
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
    )
    assert users.GetKycStatus(pb.GetKycStatusRequest(user_id=user.user_id)).kyc_status.review_pending

    verified = review(users, user, passport.document_id)
    assert (verified.document.state, verified.kyc_level) == (Doc.STATE_VERIFIED, 1)
    assert verified.document.HasField("review_time")
    assert review(users, user, passport.document_id).document == verified.document  # same decision: replay
    refused(
        lambda: review(users, user, passport.document_id, reason="blurry"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )

    address = users.SubmitKycDocument(kyc_request(user, Doc.DOCUMENT_TYPE_PROOF_OF_ADDRESS)).document
    rejected = review(users, user, address.document_id, reason="older than three months")
    assert (rejected.document.state, rejected.document.rejection_reason, rejected.kyc_level) == (
        Doc.STATE_REJECTED,
        "older than three months",
        1,
    )
    second = users.SubmitKycDocument(kyc_request(user, Doc.DOCUMENT_TYPE_PROOF_OF_ADDRESS)).document
    assert review(users, user, second.document_id).kyc_level == 2

    status = users.GetKycStatus(pb.GetKycStatusRequest(user_id=user.user_id)).kyc_status
    assert (status.kyc_level, status.review_pending) == (2, False)
    level2_eur = next(lim for lim in status.limits if lim.per_transaction.currency == "EUR")
    assert level2_eur.per_transaction.amount_minor > level0_eur.per_transaction.amount_minor
    assert users.GetUser(pb.GetUserRequest(user_id=user.user_id)).user.kyc_level == 2
    risk = users_as_fraud.GetUserRiskProfile(pb.GetUserRiskProfileRequest(user_id=user.user_id)).risk_profile
    assert (risk.kyc_level, risk.state, risk.country_code, risk.email_domain, risk.account_age_days) == (
        2,
        pb.User.STATE_ACTIVE,
        "GB",
        "example.org",
        0,
    )

    # Newest first, a page at a time.
    page = users.ListKycDocuments(pb.ListKycDocumentsRequest(user_id=user.user_id, page_size=2))
    assert [d.document_id for d in page.documents] == [second.document_id, address.document_id]
    rest = users.ListKycDocuments(
        pb.ListKycDocumentsRequest(user_id=user.user_id, page_size=2, page_token=page.next_page_token)
    )
    assert [d.document_id for d in rest.documents] == [passport.document_id] and rest.next_page_token == ""
    other = register(users)
    refused(
        lambda: users.ListKycDocuments(
            pb.ListKycDocumentsRequest(user_id=other.user_id, page_token=page.next_page_token)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )


def test_kyc_refusals_name_what_is_wrong(
    users: UserServiceStub, db: psycopg.Connection[dict[str, Any]]
) -> None:
    user = register(users)
    document = users.SubmitKycDocument(kyc_request(user, Doc.DOCUMENT_TYPE_NATIONAL_ID)).document
    refused(lambda: review(users, user, str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    other = register(users)
    refused(lambda: review(users, other, document.document_id), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    refused(
        lambda: users.ReviewKycDocument(
            pb.ReviewKycDocumentRequest(
                user_id=user.user_id, document_id=document.document_id, decision=pb.KYC_DECISION_REJECTED
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    refused(
        lambda: users.SubmitKycDocument(kyc_request(register(users), Doc.DOCUMENT_TYPE_UNSPECIFIED)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    refused(
        lambda: users.SubmitKycDocument(
            kyc_request(pb.User(user_id=str(uuid.uuid4())), Doc.DOCUMENT_TYPE_PASSPORT)
        ),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    row = db.execute(
        "SELECT state FROM kyc_documents WHERE document_id = %s", (document.document_id,)
    ).fetchone()
    assert row == {"state": "PENDING"}


# -- GDPR ------------------------------------------------------------------------------------


def test_the_export_holds_the_personal_data_and_no_secret(users: UserServiceStub) -> None:
    source = new_source()
    user = register(users, source)
    ended = login(users, user.email, source)
    users.Logout(pb.LogoutRequest(refresh_token=ended.refresh_token))
    session = login(users, user.email, source)
    users.SubmitKycDocument(kyc_request(user, Doc.DOCUMENT_TYPE_PASSPORT, reference="kyc/passport-1.jpg"))
    export = users.ExportUserData(pb.ExportUserDataRequest(user_id=user.user_id)).data_export
    assert (export.user.email, export.user.phone, export.profile.display_name) == (
        user.email,
        user.phone,
        "Someone",
    )
    assert [d.document_reference for d in export.kyc_documents] == ["kyc/passport-1.jpg"]
    # The sessions (from Cassandra), newest first, the logged-out one too while it is stored.
    assert [(s.state, s.ip_address, s.user_agent.startswith("grpc-python/")) for s in export.sessions] == [
        (pb.SessionSummary.STATE_ACTIVE, source, True),
        (pb.SessionSummary.STATE_REVOKED, source, True),
    ]
    assert all(s.expire_time.seconds > s.create_time.seconds for s in export.sessions)
    raw = export.SerializeToString()
    for secret in (PASSWORD, session.refresh_token, session.access_token, ended.refresh_token, "$argon2"):
        assert secret.encode() not in raw


def test_erasure_anonymises_every_personal_field_and_keeps_the_id(
    users: UserServiceStub,
    users_as_fraud: UserServiceStub,
    db: psycopg.Connection[dict[str, Any]],
    cql: Session,
) -> None:
    source = new_source()
    user = register(users, source, display_name="Erin Erasable")
    refresh_token = login(users, user.email, source).refresh_token
    login(users, user.email, source)
    assert [s["ip_address"] for s in sessions_of(cql, user.user_id)] == [source, source]
    users.UpdateUserProfile(profile_update(user, 1, ["display_name"], display_name="Erin Renamed"))
    document = users.SubmitKycDocument(kyc_request(user, Doc.DOCUMENT_TYPE_PASSPORT, "kyc/erin.jpg")).document
    review(users, user, document.document_id, reason="name is Erin Erasable, not visible")

    erased = users.EraseUser(pb.EraseUserRequest(user_id=user.user_id, reason="ticket GDPR-1")).user
    assert erased.user_id == user.user_id and erased.state == pb.User.STATE_ERASED
    assert (erased.email, erased.phone, erased.profile.display_name, erased.profile.country_code) == (
        "",
        "",
        "",
        "",
    )
    assert users.EraseUser(pb.EraseUserRequest(user_id=user.user_id)).user == erased  # idempotent
    assert users.GetUser(pb.GetUserRequest(user_id=user.user_id)).user == erased  # the cache too

    personal = [user.email, user.email.lower(), user.phone, "Erin", "kyc/erin.jpg", source]
    tables = ["users", "user_profiles", "kyc_documents", "audit_log"]
    for table in tables:
        rows = db.execute(
            f"SELECT * FROM {table} WHERE {'subject_id' if table == 'audit_log' else 'user_id'} = %s",
            (user.user_id,),
        ).fetchall()
        text = json.dumps(rows, default=str)
        assert not [p for p in personal if p in text], (table, text)
    row = db.execute(
        "SELECT email, phone, password_hash, state FROM users WHERE user_id = %s", (user.user_id,)
    ).fetchone()
    assert row == {"email": "", "phone": "", "password_hash": "", "state": "ERASED"}
    # The sessions (their addresses and user agents) are gone from Cassandra; the token's
    # lookup row (a hash and ids, nothing personal) finds no session to refresh.
    assert sessions_of(cql, user.user_id) == []
    assert source not in json.dumps(token_row(cql, refresh_token), default=str)
    refused(
        lambda: users.RefreshSession(pb.RefreshSessionRequest(refresh_token=refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    # The KYC record stays (type, verdict, dates), without its media reference.
    kyc = db.execute(
        "SELECT document_type, state, document_reference FROM kyc_documents WHERE user_id = %s",
        (user.user_id,),
    ).fetchone()
    assert kyc == {"document_type": "PASSPORT", "state": "REJECTED", "document_reference": ""}
    # The audit trail keeps who did what, redacted; erasure itself is recorded with its reason.
    trail = audit_rows(db, user.user_id)
    assert [r["action"] for r in trail][-1] == "user.erased" and trail[-1]["details"][
        "reason"
    ] == "ticket GDPR-1"
    assert all(r["redacted_at"] is not None for r in trail[:-1])
    assert "user.registered" in [r["action"] for r in trail]

    risk = users_as_fraud.GetUserRiskProfile(pb.GetUserRiskProfileRequest(user_id=user.user_id)).risk_profile
    assert (risk.state, risk.email_domain, risk.country_code) == (pb.User.STATE_ERASED, "", "")
    refused(lambda: login(users, user.email, source), grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    refused(
        lambda: users.DeleteUser(pb.DeleteUserRequest(user_id=user.user_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    # Erased identifiers are free again.
    assert register(users, email=user.email, phone=user.phone).user_id != user.user_id


# -- audit -----------------------------------------------------------------------------------


def test_every_change_is_audited_with_actor_source_and_no_secret(
    users: UserServiceStub, db: psycopg.Connection[dict[str, Any]]
) -> None:
    source = new_source()
    user = register(users, source)
    session = login(users, user.email, source)
    bearer = (("authorization", f"Bearer {session.access_token}"),)
    users.UpdateUserProfile(
        profile_update(user, 1, ["display_name"], display_name="Audited"), metadata=via(source) + bearer
    )
    users.DeleteUser(pb.DeleteUserRequest(user_id=user.user_id), metadata=via(source))
    trail = audit_rows(db, user.user_id)
    assert [(r["action"], r["actor"], r["source_ip"]) for r in trail] == [
        ("user.registered", f"user:{user.user_id}", source),
        ("session.opened", f"user:{user.user_id}", source),
        ("user.profile_updated", f"user:{user.user_id}", source),
        ("user.deleted", "anonymous", source),
    ]
    update = trail[2]
    assert update["before"] == {"display_name": "Someone", "profile_version": 1}
    assert update["after"] == {"display_name": "Audited", "profile_version": 2}
    assert (trail[3]["before"], trail[3]["after"]) == ({"state": "ACTIVE"}, {"state": "DELETED"})
    text = json.dumps(trail, default=str)
    for secret in (PASSWORD, "$argon2", session.refresh_token, session.access_token):
        assert secret not in text


def test_the_audit_log_is_append_only(users: UserServiceStub, db: psycopg.Connection[dict[str, Any]]) -> None:
    user = register(users)
    for statement in (
        "UPDATE audit_log SET actor = 'someone else' WHERE subject_id = %s",
        "DELETE FROM audit_log WHERE subject_id = %s",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.execute(statement, (user.user_id,))
    assert [r["action"] for r in audit_rows(db, user.user_id)] == ["user.registered"]


# -- login throttling ------------------------------------------------------------------------


def test_an_account_is_locked_after_repeated_failures_even_for_the_right_password(
    users: UserServiceStub, cache: redis.Redis
) -> None:
    source = new_source()
    user = register(users, source)
    for _ in range(POLICY.account_limit):
        refused(
            lambda: login(users, user.email, source, "wrong password!"),
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )
    with pytest.raises(grpc.RpcError) as err:
        login(users, user.email.upper(), source)  # the right password, any case of the email
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, _ = rpc_details(err.value)
    assert info is not None and info.reason == "RATE_LIMITED" and info.metadata["scope"] == "account"
    retry_after = int(info.metadata["retry_after_seconds"])
    assert 0 < retry_after <= POLICY.account_lockout_seconds
    retry = retry_info(err.value)
    assert retry is not None and 0 < retry.retry_delay.seconds <= POLICY.account_lockout_seconds
    ttl = cache.ttl(account_key(user.email))
    assert 0 < ttl <= POLICY.account_lockout_seconds  # the lockout ends by itself
    assert PASSWORD not in (err.value.details() or "")
    # The lock is the account's: another account from the same source logs in.
    other = register(users, source)
    assert login(users, other.email, source).user_id == other.user_id


def test_a_source_is_locked_after_repeated_failures_across_accounts(
    users: UserServiceStub, cache: redis.Redis
) -> None:
    source = new_source()
    victim = register(users, source)
    for i in range(POLICY.source_limit):
        refused(
            lambda i=i: login(users, f"nobody.{i}.{uuid.uuid4().hex}@example.org", source, "guess guess"),  # type: ignore[misc]
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )
    info = refused(
        lambda: login(users, victim.email, source), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"
    )
    assert info.metadata["scope"] == "source"
    assert 0 < cache.ttl(source_key(source)) <= POLICY.source_lockout_seconds
    # The same account from elsewhere is not locked.
    assert login(users, victim.email, new_source()).user_id == victim.user_id


def test_a_successful_login_clears_the_account_counter(users: UserServiceStub, cache: redis.Redis) -> None:
    source = new_source()
    user = register(users, source)
    for _ in range(2):
        for _ in range(POLICY.account_limit - 1):
            refused(
                lambda: login(users, user.email, source, "wrong password!"),
                grpc.StatusCode.UNAUTHENTICATED,
                "INVALID_CREDENTIALS",
            )
        assert login(users, user.email, source).user_id == user.user_id
        assert cache.get(account_key(user.email)) is None


async def test_throttling_fails_open_when_redis_is_unreachable() -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, socket_timeout=1)
    throttle = LoginThrottle(client)
    try:
        assert await throttle.record_failure("a@example.org", "2001:db8::1") is None
        assert await throttle.lockout("a@example.org", "2001:db8::1") is None
        await throttle.record_success("a@example.org")
    finally:
        await client.aclose()


# -- hostile input and secrets in logs -------------------------------------------------------

INJECTIONS = [
    "Robert'); DROP TABLE users;--",
    "' OR '1'='1",
    'x"; DELETE FROM audit_log; --',
    "%s %(user_id)s",
]


def test_sql_injection_strings_are_stored_as_plain_text(
    users: UserServiceStub, db: psycopg.Connection[dict[str, Any]]
) -> None:
    for text in INJECTIONS:
        user = register(users, display_name=text)
        updated = users.UpdateUserProfile(
            profile_update(user, 1, ["display_name"], display_name=text + "!")
        ).user
        assert updated.profile.display_name == text + "!"
        document = users.SubmitKycDocument(
            kyc_request(user, Doc.DOCUMENT_TYPE_PASSPORT, reference=text)
        ).document
        assert document.document_reference == text
        rejected = review(users, user, document.document_id, reason=text)
        assert rejected.document.rejection_reason == text
        erased = users.EraseUser(pb.EraseUserRequest(user_id=user.user_id, reason=text)).user
        assert erased.state == pb.User.STATE_ERASED
        assert audit_rows(db, user.user_id)[-1]["details"]["reason"] == text
    refused(
        lambda: login(users, "' OR '1'='1", new_source()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    # Every table is still there and still holds its rows.
    for table in ("users", "user_profiles", "kyc_documents", "audit_log"):
        assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] > 0  # type: ignore[index]


def test_no_password_or_token_reaches_the_log(users: UserServiceStub, profile) -> None:  # type: ignore[no-untyped-def]
    source = new_source()
    password = f"unique secret {uuid.uuid4().hex}"
    user = register(users, source, password=password)
    session = login(users, user.email, source, password)
    refreshed = users.RefreshSession(pb.RefreshSessionRequest(refresh_token=session.refresh_token))
    refused(
        lambda: users.RefreshSession(pb.RefreshSessionRequest(refresh_token=session.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    with pytest.raises(grpc.RpcError) as err:
        login(users, user.email, source, password + "x")
    assert password not in (err.value.details() or "")
    log = (ROOT / ".data" / profile.name / "logs" / "users.log").read_text(errors="replace")
    assert user.user_id in log or "RefreshSession" in log  # the log is the service's, and current
    for secret in (password, session.refresh_token, refreshed.refresh_token, session.access_token):
        assert secret not in log
