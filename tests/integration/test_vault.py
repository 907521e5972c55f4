"""The card vault through its gRPC API against the real PostgreSQL of the test mesh:
tokenisation per brand, refusals that store nothing, fingerprints, detokenisation,
data key rotation with the background re-encryption sweep, idempotency, deletion, and a
scan proving that no card number reaches the vault's database or any log of the mesh."""

from __future__ import annotations

import functools
import hashlib
import random
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from interpay.vault.v1 import vault_service_pb2 as pb
from interpay.vault.v1.vault_service_pb2_grpc import VaultServiceStub

from services.framework.db import Database
from services.framework.identity import plaintext
from services.vault.adapters.crypto import KeyEncryptionKey
from services.vault.service_layer.keyring import KeyRing
from services.vault.service_layer.vault import Vault
from tests.conftest import ROOT, database_url
from tests.helpers import rpc_details

# Each network's published test number and the brand the vault must derive from it.
BRAND_TEST_CARDS = [
    ("4242424242424242", pb.CARD_BRAND_VISA),
    ("4222222222222", pb.CARD_BRAND_VISA),  # a 13-digit Visa
    ("5555555555554444", pb.CARD_BRAND_MASTERCARD),
    ("2223003122003222", pb.CARD_BRAND_MASTERCARD),  # the 2-series
    ("378282246310005", pb.CARD_BRAND_AMEX),
    ("6011111111111117", pb.CARD_BRAND_DISCOVER),
    ("3530111333300000", pb.CARD_BRAND_JCB),
    ("36227206271667", pb.CARD_BRAND_DINERS_CLUB),
    ("6200000000000005", pb.CARD_BRAND_UNIONPAY),
    ("6759649826438453", pb.CARD_BRAND_OTHER),  # Maestro: a network the contract does not name
]
NEXT_YEAR = datetime.now(UTC).year + 1
SWEEP_DEADLINE_SECONDS = 60.0  # the test mesh sweeps every 5 s (INTERPAY_VAULT_REENCRYPT_INTERVAL_SECONDS)


def luhn_digit(body: str) -> str:
    """The check digit that makes `body` + digit pass the Luhn check."""
    total = 0
    for position, char in enumerate(reversed(body)):
        digit = int(char)
        if position % 2 == 0:  # these are doubled once the check digit is appended
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


def fresh_pan(prefix: str = "4", length: int = 16) -> str:
    """A Luhn-valid card number no other test (or run) uses, so finding it anywhere is
    this module's doing."""
    body = prefix + "".join(random.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return body + luhn_digit(body)


def break_luhn(pan: str) -> str:
    return pan[:-1] + str((int(pan[-1]) + 1) % 10)


@pytest.fixture(scope="module")
def vault(channel: Callable[..., grpc.Channel]) -> VaultServiceStub:
    return VaultServiceStub(channel("vault"))  # as an operator: key administration is theirs


@pytest.fixture(scope="module")
def card_processor(channel: Callable[..., grpc.Channel]) -> VaultServiceStub:
    """The vault as the orchestrator (where the card processor adapter lives) calls it: the
    only identity DetokenizeCard admits."""
    return VaultServiceStub(channel("vault", "orchestrator"))


@pytest.fixture
def vault_db(profile, mesh_secrets) -> Iterator[psycopg.Connection[Any]]:  # type: ignore[no-untyped-def]
    with psycopg.connect(database_url(profile, mesh_secrets, "vault"), autocommit=True) as conn:
        yield conn


def tokenize(
    vault: VaultServiceStub,
    pan: str,
    month: int = 12,
    year: int = NEXT_YEAR,
    name: str = "Ada Lovelace",
    key: str | None = None,
) -> pb.Card:
    metadata = (("idempotency-key", key),) if key else None
    request = pb.TokenizeCardRequest(pan=pan, expiry_month=month, expiry_year=year, cardholder_name=name)
    return vault.TokenizeCard(request, metadata=metadata, timeout=10).card  # type: ignore[no-any-return]


def detokenize(
    vault: VaultServiceStub, token: str, payment_id: str | None = None
) -> pb.DetokenizeCardResponse:
    request = pb.DetokenizeCardRequest(token=token, payment_id=payment_id or str(uuid.uuid4()))
    return vault.DetokenizeCard(request, timeout=10)  # type: ignore[no-any-return]


def refusal(call: Callable[[], object], code: grpc.StatusCode, reason: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    info, _ = rpc_details(err.value)
    assert info is not None and info.reason == reason, info
    assert info.domain == "vault.interpay.dev"
    return err.value


def card_row(conn: psycopg.Connection[Any], token: str) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT dek_version, ciphertext, deleted_at FROM cards WHERE token = %s", (token,)
    ).fetchone()


def poll(check: Callable[[], bool], what: str, deadline_seconds: float = SWEEP_DEADLINE_SECONDS) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {deadline_seconds} s: {what}")
        time.sleep(0.25)


# -- where a card number must never be --------------------------------------------------


def tables_containing(conn: psycopg.Connection[Any], needle: str) -> list[str]:
    """The vault's tables with a row whose text form holds `needle`, in clear or as the
    hex of its bytes (how a bytea column prints)."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT quote_ident(table_name) FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        ).fetchall()
    ]
    assert "cards" in tables and "audit_log" in tables
    found = []
    for table in tables:
        row = conn.execute(
            f"SELECT count(*) FROM {table} t WHERE strpos(t::text, %s) > 0 OR strpos(t::text, %s) > 0",
            (needle, needle.encode().hex()),
        ).fetchone()
        if row and row[0]:
            found.append(table)
    return found


def logs_containing(profile_name: str, needles: list[str]) -> dict[str, list[str]]:
    """For each needle, the log files of the mesh (every process) that hold it."""
    logs = ROOT / ".data" / profile_name / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert files, f"no log files under {logs}"
    found: dict[str, list[str]] = {needle: [] for needle in needles}
    for path in files:
        content = path.read_bytes()
        for needle in needles:
            if needle.encode() in content:
                found[needle].append(str(path))
    return found


def vault_log(profile_name: str) -> Path:
    return ROOT / ".data" / profile_name / "logs" / "vault.log"


def assert_stored_nowhere(conn: psycopg.Connection[Any], profile_name: str, pans: list[str]) -> None:
    for pan in pans:
        assert tables_containing(conn, pan) == [], "a card number is stored in the vault database"
    logged = {pan[-4:]: files for pan, files in logs_containing(profile_name, pans).items() if files}
    assert logged == {}, "a card number was logged (by its last four digits: the files)"


# -- tokenisation ------------------------------------------------------------------------


@pytest.mark.parametrize(("pan", "brand"), BRAND_TEST_CARDS)
def test_each_brand_tokenizes_to_its_details_and_detokenizes_back(
    vault: VaultServiceStub, card_processor: VaultServiceStub, pan, brand
) -> None:  # type: ignore[no-untyped-def]
    card = tokenize(vault, pan, month=7, year=NEXT_YEAR, name="Grace Hopper")
    uuid.UUID(card.token)
    assert card.brand == brand
    assert card.last4 == pan[-4:]
    assert (card.expiry_month, card.expiry_year) == (7, NEXT_YEAR)
    assert len(card.fingerprint) == 64 and int(card.fingerprint, 16) >= 0
    assert card.create_time.seconds > 0

    got = vault.GetCard(pb.GetCardRequest(token=card.token), timeout=10).card
    assert got == card
    assert (
        pan.encode() not in vault.GetCard(pb.GetCardRequest(token=card.token), timeout=10).SerializeToString()
    )

    clear = detokenize(card_processor, card.token)
    assert clear.pan == pan
    assert (clear.expiry_month, clear.expiry_year) == (7, NEXT_YEAR)
    assert clear.cardholder_name == "Grace Hopper"
    assert clear.brand == brand


def test_a_card_is_encrypted_in_the_database_not_stored(vault: VaultServiceStub, vault_db) -> None:  # type: ignore[no-untyped-def]
    pan = fresh_pan()
    card = tokenize(vault, pan)
    row = vault_db.execute(
        "SELECT brand, last4, dek_version, octet_length(nonce), ciphertext FROM cards WHERE token = %s",
        (card.token,),
    ).fetchone()
    assert row is not None
    brand, last4, version, nonce_bytes, ciphertext = row
    assert (brand, last4, nonce_bytes) == ("VISA", pan[-4:], 12)
    assert version >= 1
    assert pan.encode() not in bytes(ciphertext) and b"Ada Lovelace" not in bytes(ciphertext)


BAD_CARDS = [
    # (pan, month, year, reason, field)
    ("4242424242424241", 12, NEXT_YEAR, "INVALID_CARD_NUMBER", "pan"),  # Luhn fails
    ("9" + "0" * 14 + luhn_digit("9" + "0" * 14), 12, NEXT_YEAR, "INVALID_CARD_NUMBER", "pan"),  # no network
    ("7" + "1" * 14 + luhn_digit("7" + "1" * 14), 12, NEXT_YEAR, "INVALID_CARD_NUMBER", "pan"),  # no network
    ("3782822463100051", 12, NEXT_YEAR, "INVALID_CARD_NUMBER", "pan"),  # an Amex number has 15 digits
    ("4242424242424242", 1, 2020, "CARD_EXPIRED", "expiry_year"),
    ("4242424242424242", 1, datetime.now(UTC).year, "CARD_EXPIRED", "expiry_month")
    if datetime.now(UTC).month > 1
    else ("4242424242424242", 12, datetime.now(UTC).year - 1, "CARD_EXPIRED", "expiry_year"),
    ("4242 4242 4242 4242", 12, NEXT_YEAR, "INVALID_REQUEST", "pan"),  # digits only
    ("424242424242", 12, NEXT_YEAR, "INVALID_REQUEST", "pan"),  # too short
    ("4242424242424242", 13, NEXT_YEAR, "INVALID_REQUEST", "expiry_month"),
]


@pytest.mark.parametrize(("pan", "month", "year", "reason", "field"), BAD_CARDS)
def test_a_bad_card_is_invalid_argument_naming_the_field_and_nothing_is_stored(  # type: ignore[no-untyped-def]
    vault: VaultServiceStub, vault_db, pan, month, year, reason, field
) -> None:
    key = str(uuid.uuid4())
    err = refusal(
        lambda: tokenize(vault, pan, month=month, year=year, key=key),
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
    )
    _, violations = rpc_details(err)
    assert field in [v.field for v in violations]
    assert pan not in (err.details() or "") and pan[-8:] not in (err.details() or "")
    assert pan not in str(rpc_details(err)[0])
    # Nothing was recorded under the key: the same key is still free for a good card.
    assert (
        vault_db.execute("SELECT 1 FROM tokenize_requests WHERE idempotency_key = %s", (key,)).fetchone()
        is None
    )
    good = tokenize(vault, fresh_pan(), key=key)
    assert vault_db.execute(
        "SELECT token::text FROM tokenize_requests WHERE idempotency_key = %s", (key,)
    ).fetchone() == (good.token,)


def test_the_fingerprint_is_stable_per_card_number_and_keyed(vault: VaultServiceStub) -> None:
    pan, other = fresh_pan(), fresh_pan()
    first, second = tokenize(vault, pan), tokenize(vault, pan, month=1, name="Someone Else")
    third = tokenize(vault, other)
    assert first.token != second.token  # every call issues a new token
    assert first.fingerprint == second.fingerprint
    assert third.fingerprint != first.fingerprint
    # Keyed: not a plain hash anyone could recompute by trying candidate numbers.
    for digest in (hashlib.sha256, hashlib.sha512, hashlib.sha1, hashlib.md5):
        assert first.fingerprint != digest(pan.encode()).hexdigest()


def test_the_same_idempotency_key_replays_the_token_and_refuses_another_card(  # type: ignore[no-untyped-def]
    vault: VaultServiceStub, vault_db
) -> None:
    key, pan = str(uuid.uuid4()), fresh_pan()
    first = tokenize(vault, pan, key=key)
    assert tokenize(vault, pan, key=key) == first
    refusal(
        lambda: tokenize(vault, fresh_pan(), key=key),
        grpc.StatusCode.FAILED_PRECONDITION,
        "IDEMPOTENCY_MISMATCH",
    )
    assert tokenize(vault, pan, key=key) == first  # the refusal changed nothing
    count = vault_db.execute(
        "SELECT count(*) FROM cards WHERE fingerprint = %s", (first.fingerprint,)
    ).fetchone()
    assert count == (1,)


def test_a_deleted_card_is_shredded_and_gone(vault: VaultServiceStub, card_processor, vault_db) -> None:  # type: ignore[no-untyped-def]
    card = tokenize(vault, fresh_pan())
    vault.DeleteCard(pb.DeleteCardRequest(token=card.token), timeout=10)
    refusal(
        lambda: vault.GetCard(pb.GetCardRequest(token=card.token), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "CARD_NOT_FOUND",
    )
    refusal(lambda: detokenize(card_processor, card.token), grpc.StatusCode.NOT_FOUND, "CARD_NOT_FOUND")
    version, ciphertext, deleted_at = card_row(vault_db, card.token)  # type: ignore[misc]
    assert (version, ciphertext) == (None, None) and deleted_at is not None
    vault.DeleteCard(pb.DeleteCardRequest(token=card.token), timeout=10)  # deleting again succeeds
    refusal(
        lambda: vault.DeleteCard(pb.DeleteCardRequest(token=str(uuid.uuid4())), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "CARD_NOT_FOUND",
    )


def test_an_unknown_token_is_not_found_and_a_malformed_one_invalid(vault: VaultServiceStub) -> None:
    refusal(
        lambda: vault.GetCard(pb.GetCardRequest(token=str(uuid.uuid4())), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "CARD_NOT_FOUND",
    )
    err = refusal(
        lambda: vault.GetCard(pb.GetCardRequest(token="'; DROP TABLE cards; --"), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert [v.field for v in rpc_details(err)[1]] == ["token"]


def test_detokenization_is_audited_with_the_caller_and_the_payment(
    vault: VaultServiceStub, card_processor, vault_db
) -> None:  # type: ignore[no-untyped-def]
    card, payment_id = tokenize(vault, fresh_pan()), str(uuid.uuid4())
    detokenize(card_processor, card.token, payment_id)
    row = vault_db.execute(
        "SELECT caller, payment_id::text FROM audit_log WHERE action = 'CARD_DETOKENIZED' AND token = %s",
        (card.token,),
    ).fetchone()
    assert row is not None
    caller, audited_payment = row
    # The identity in the caller's mTLS certificate (unverified:<address> only in plaintext).
    expected = "unverified:ipv4:127.0.0.1:" if plaintext() else "orchestrator"
    assert caller.startswith(expected) and audited_payment == payment_id


# -- data key rotation -------------------------------------------------------------------


def test_rotation_keeps_old_cards_readable_and_the_sweep_reencrypts_them(  # type: ignore[no-untyped-def]
    vault: VaultServiceStub, card_processor, vault_db, profile
) -> None:
    old_pan, swept_pan, new_pan = fresh_pan(), fresh_pan("5", 16), fresh_pan()
    old_card, swept_card = tokenize(vault, old_pan), tokenize(vault, swept_pan)
    before = vault.GetKeyStatus(pb.GetKeyStatusRequest(), timeout=10)
    active = before.active_version
    assert card_row(vault_db, old_card.token)[0] == active  # type: ignore[index]
    assert before.key_encryption_key_id and before.data_keys[0].version == active

    # A stale expected version rotates nothing.
    refusal(
        lambda: vault.RotateDataKey(
            pb.RotateDataKeyRequest(reason="stale", expected_active_version=active + 7), timeout=10
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert vault.GetKeyStatus(pb.GetKeyStatusRequest(), timeout=10).active_version == active

    rotated = vault.RotateDataKey(
        pb.RotateDataKeyRequest(reason="integration test", expected_active_version=active), timeout=10
    )
    assert rotated.previous_version == active
    assert rotated.data_key.version == active + 1
    assert rotated.data_key.state == pb.DataKey.STATE_ACTIVE
    # The same call retried does not rotate twice.
    refusal(
        lambda: vault.RotateDataKey(
            pb.RotateDataKeyRequest(reason="integration test", expected_active_version=active), timeout=10
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )

    # New cards use the new version; an old card still detokenises (and moves to it).
    new_card = tokenize(vault, new_pan)
    assert card_row(vault_db, new_card.token)[0] == active + 1  # type: ignore[index]
    assert detokenize(card_processor, old_card.token).pan == old_pan
    assert card_row(vault_db, old_card.token)[0] == active + 1  # type: ignore[index]

    # The card nobody detokenised is re-encrypted by the background sweep.
    poll(lambda: card_row(vault_db, swept_card.token)[0] == active + 1, "the sweep re-encrypts the card")  # type: ignore[index]
    poll(
        lambda: vault.GetKeyStatus(pb.GetKeyStatusRequest(), timeout=10).cards_pending_reencryption == 0,
        "no card left under an old data key version",
    )
    status = vault.GetKeyStatus(pb.GetKeyStatusRequest(), timeout=10)
    assert status.active_version == active + 1
    versions = {k.version: k for k in status.data_keys}
    assert versions[active].state == pb.DataKey.STATE_DECRYPT_ONLY
    assert versions[active].retire_time.seconds > 0 and versions[active].card_count == 0
    assert detokenize(card_processor, swept_card.token).pan == swept_pan
    assert vault.GetCard(pb.GetCardRequest(token=swept_card.token), timeout=10).card == swept_card
    assert_stored_nowhere(vault_db, profile.name, [old_pan, swept_pan, new_pan])


async def test_a_drained_data_key_is_retired_and_its_material_erased(  # type: ignore[no-untyped-def]
    vault: VaultServiceStub, card_processor, vault_db, profile, mesh_secrets
) -> None:
    pan = fresh_pan()
    card = tokenize(vault, pan)
    active = vault.GetKeyStatus(pb.GetKeyStatusRequest(), timeout=10).active_version
    vault.RotateDataKey(
        pb.RotateDataKeyRequest(reason="retire test", expected_active_version=active), timeout=10
    )
    poll(
        lambda: vault.GetKeyStatus(pb.GetKeyStatusRequest(), timeout=10).cards_pending_reencryption == 0,
        "no card left under an old data key version",
    )
    assert card_row(vault_db, card.token)[0] == active + 1  # type: ignore[index]

    # The retirement step of the background job, run here with no retention period
    # against the vault's real database and key (the mesh's job keeps versions 7 days).
    db = Database(database_url(profile, mesh_secrets, "vault"), None, max_size=2)
    await db.pool.open(wait=True)
    try:
        kek = KeyEncryptionKey.from_file(str(ROOT / ".data" / profile.name / "vault-kek.bin"))
        retired = await Vault(db, kek, KeyRing(db, kek)).retire_drained_keys(retain_seconds=0)
    finally:
        await db.close()
    assert active in retired and active + 1 not in retired
    row = vault_db.execute(
        "SELECT state, wrapped_key, destroyed_at FROM data_keys WHERE version = %s", (active,)
    ).fetchone()
    assert row is not None and row[0] == "RETIRED" and row[1] is None and row[2] is not None
    audited = vault_db.execute(
        "SELECT count(*) FROM audit_log WHERE action = 'DATA_KEY_RETIRED' AND key_version = %s", (active,)
    ).fetchone()
    assert audited == (1,)
    status = vault.GetKeyStatus(pb.GetKeyStatusRequest(), timeout=10)
    assert active not in [k.version for k in status.data_keys]  # only versions whose material is stored
    assert detokenize(card_processor, card.token).pan == pan


# -- no card number anywhere ---------------------------------------------------------------


def test_no_card_number_reaches_the_database_or_any_log(
    vault: VaultServiceStub, card_processor, vault_db, profile
) -> None:  # type: ignore[no-untyped-def]
    pans = [fresh_pan(), fresh_pan("37", 15), fresh_pan("6011", 16)]
    bad = break_luhn(fresh_pan())
    expired = fresh_pan()
    tokens = []
    for pan in pans:
        key = str(uuid.uuid4())
        card = tokenize(vault, pan, key=key)
        tokenize(vault, pan, key=key)  # a replay
        refusal(
            functools.partial(tokenize, vault, fresh_pan(), key=key),
            grpc.StatusCode.FAILED_PRECONDITION,
            "IDEMPOTENCY_MISMATCH",
        )
        vault.GetCard(pb.GetCardRequest(token=card.token), timeout=10)
        assert detokenize(card_processor, card.token).pan == pan
        tokens.append(card.token)
    refusal(lambda: tokenize(vault, bad), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CARD_NUMBER")
    refusal(
        lambda: tokenize(vault, expired, month=1, year=2021), grpc.StatusCode.INVALID_ARGUMENT, "CARD_EXPIRED"
    )
    vault.DeleteCard(pb.DeleteCardRequest(token=tokens[-1]), timeout=10)

    # The scans look at real content: the tokens are there, in the database and the log.
    for token in tokens:
        assert "cards" in tables_containing(vault_db, token)
        poll(lambda: token.encode() in vault_log(profile.name).read_bytes(), "the vault logs the token", 30)  # noqa: B023
    assert_stored_nowhere(vault_db, profile.name, [*pans, bad, expired])


def test_tokenize_through_the_gateway(gateway, vault_db, profile) -> None:  # type: ignore[no-untyped-def]
    pan = fresh_pan()
    reply = gateway.post(
        "/v1/cards:tokenize",
        json={"pan": pan, "expiryMonth": 3, "expiryYear": NEXT_YEAR, "cardholderName": "Ada"},
    )
    assert reply.status_code == 200, reply.text
    card = reply.json()["card"]
    assert card["brand"] == "CARD_BRAND_VISA" and card["last4"] == pan[-4:] and "pan" not in card
    assert gateway.get(f"/v1/cards/{card['token']}").json()["card"]["fingerprint"] == card["fingerprint"]
    refused = gateway.post(
        "/v1/cards:tokenize", json={"pan": break_luhn(pan), "expiryMonth": 3, "expiryYear": NEXT_YEAR}
    )
    assert refused.status_code == 400
    assert pan[:12] not in refused.text
    # DetokenizeCard is internal: the gateway has no route to it.
    assert gateway.post("/interpay.vault.v1.VaultService/DetokenizeCard", content=b"").status_code == 404
    assert_stored_nowhere(vault_db, profile.name, [pan, break_luhn(pan)])  # Envoy's logs included


def test_concurrent_retries_under_one_idempotency_key_tokenize_once(
    vault: VaultServiceStub, vault_db
) -> None:  # type: ignore[no-untyped-def]
    key, pan = str(uuid.uuid4()), fresh_pan()
    with ThreadPoolExecutor(8) as pool:
        cards = list(pool.map(lambda _: tokenize(vault, pan, key=key), range(8)))
    assert len({c.token for c in cards}) == 1
    count = vault_db.execute(
        "SELECT count(*) FROM cards WHERE fingerprint = %s", (cards[0].fingerprint,)
    ).fetchone()
    assert count == (1,)
