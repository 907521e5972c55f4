"""The vault's pure parts: card number checks and brands, expiry, the crypto of the key
hierarchy, rotation's precondition, and the log filter that masks card numbers."""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from datetime import UTC, datetime

import pytest

from services.framework.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated
from services.framework.identity import Caller, admit, identify
from services.framework.topology import BY_NAME, OPERATOR
from services.vault.adapters.crypto import (
    CiphertextTampered,
    KeyEncryptionKey,
    KeyUnwrapFailed,
    SealedCard,
    new_data_key,
)
from services.vault.adapters.log_redaction import MASK, PanRedactingFilter, redact
from services.vault.domain.card import CardBrand, CardSecret, check_not_expired, check_pan, luhn_valid
from services.vault.domain.keys import check_rotation


@pytest.mark.parametrize(
    ("pan", "brand"),
    [
        ("4242424242424242", CardBrand.VISA),
        ("4222222222222", CardBrand.VISA),
        ("5555555555554444", CardBrand.MASTERCARD),
        ("2223003122003222", CardBrand.MASTERCARD),
        ("378282246310005", CardBrand.AMEX),
        ("6011111111111117", CardBrand.DISCOVER),
        ("3530111333300000", CardBrand.JCB),
        ("36227206271667", CardBrand.DINERS_CLUB),
        ("6200000000000005", CardBrand.UNIONPAY),
        ("6759649826438453", CardBrand.OTHER),
    ],
)
def test_test_cards_have_their_brand(pan: str, brand: CardBrand) -> None:
    assert check_pan(pan) is brand


@pytest.mark.parametrize(
    ("pan", "why"),
    [
        ("4242424242424241", "Luhn"),
        ("900000000000000" + "8", "no card network"),
        ("0000000000000000", "no card network"),
        ("7111111111111114", "no card network"),
        ("3111111111111117", "no card network"),  # 31 is assigned to no network
        ("37828224631000", "15 digits"),  # an Amex number one digit short
        ("55555555555544440", "16 digits"),
    ],
)
def test_bad_numbers_are_refused_without_showing_them(pan: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_pan(pan)
    assert err.value.reason == "INVALID_CARD_NUMBER"
    assert why in err.value.message
    assert [v.field for v in err.value.field_violations] == ["pan"]
    shown = err.value.message + json.dumps(err.value.metadata)
    assert pan not in shown and pan[-4:] + pan[:4] not in shown


def test_luhn() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def test_a_card_is_valid_through_its_expiry_month() -> None:
    now = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    check_not_expired(11, 2026, now)
    check_not_expired(1, 2027, now)
    for month, year, field in ((10, 2026, "expiry_month"), (12, 2025, "expiry_year")):
        with pytest.raises(InvalidArgument) as err:
            check_not_expired(month, year, now)
        assert err.value.reason == "CARD_EXPIRED"
        assert [v.field for v in err.value.field_violations] == [field]


def test_a_card_secret_never_shows_its_number_or_name() -> None:
    secret = CardSecret(pan="4242424242424242", expiry_month=1, expiry_year=2030, cardholder_name="Ada")
    assert "4242" not in repr(secret) and "Ada" not in repr(secret)


def test_sealed_cards_open_only_for_their_token_and_key() -> None:
    kek = KeyEncryptionKey(os.urandom(32))
    material = new_data_key()
    wrapped = kek.wrap(3, material)
    dek = kek.unwrap(3, wrapped)
    with pytest.raises(KeyUnwrapFailed):
        kek.unwrap(4, wrapped)  # a wrapped key moved to another version's row
    with pytest.raises(KeyUnwrapFailed):
        KeyEncryptionKey(os.urandom(32)).unwrap(3, wrapped)  # another KEK
    token = uuid.uuid4()
    secret = CardSecret(pan="4242424242424242", expiry_month=1, expiry_year=2030, cardholder_name="Ada")
    sealed = dek.seal(token, secret)
    assert b"4242424242424242" not in sealed.ciphertext
    assert dek.open(token, sealed) == secret
    with pytest.raises(CiphertextTampered):
        dek.open(uuid.uuid4(), sealed)  # moved to another token
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(CiphertextTampered):
        dek.open(token, SealedCard(sealed.dek_version, sealed.nonce, flipped))
    assert "material" not in repr(dek) and repr(kek).startswith("KeyEncryptionKey(key_id='kek-")


def test_the_fingerprint_is_keyed_and_stable() -> None:
    material = os.urandom(32)
    kek, same, other = (
        KeyEncryptionKey(material),
        KeyEncryptionKey(material),
        KeyEncryptionKey(os.urandom(32)),
    )
    assert kek.fingerprint("4242424242424242") == same.fingerprint("4242424242424242")
    assert kek.fingerprint("4242424242424242") != other.fingerprint("4242424242424242")
    assert kek.fingerprint("4242424242424242") != kek.fingerprint("4000056655665556")


def test_rotation_refuses_a_stale_expected_version() -> None:
    check_rotation(2, 0)
    check_rotation(2, 2)
    with pytest.raises(FailedPrecondition) as err:
        check_rotation(3, 2)
    assert err.value.reason == "INVALID_STATE" and err.value.metadata["active_version"] == "3"


def test_the_log_filter_masks_card_numbers_everywhere() -> None:
    assert redact("card 4242 4242 4242 4242 and 4242-4242-4242-4242") == f"card {MASK} and {MASK}"
    assert redact("order 1234567890123456") == "order 1234567890123456"  # not Luhn-valid
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(PanRedactingFilter())
    logger = logging.getLogger("test.vault.redaction")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("bad number 4242424242424242")
        except ValueError:
            logger.exception("failed for %s", "5555555555554444", extra={"pan_field": "378282246310005"})
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "4242424242424242" not in written and "5555555555554444" not in written
    assert MASK in written


class _Context:
    def __init__(self, identity: bytes | None) -> None:
        self.identity = identity

    def peer_identities(self) -> list[bytes] | None:
        return [self.identity] if self.identity else None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"


def authorize(context: _Context, rpc: str, require_identity: bool = True) -> Caller:
    caller = identify(context)
    admit(caller, rpc, BY_NAME["vault"].internal_callers[rpc], require_identity)
    return caller


def test_detokenize_admits_the_allowlist_only() -> None:
    allowed = BY_NAME["vault"].internal_callers["DetokenizeCard"]
    adapter = _Context(f"spiffe://interpay.local/ns/interpay/sa/{allowed[0]}".encode())
    assert str(authorize(adapter, "DetokenizeCard")) == allowed[0]
    for intruder in ("users", "gateway", "fraud", OPERATOR):
        assert intruder not in allowed
        with pytest.raises(PermissionDenied):
            authorize(_Context(f"{intruder}.interpay.svc".encode()), "DetokenizeCard")
    with pytest.raises(Unauthenticated):  # under mTLS a caller without an identity is refused
        authorize(_Context(None), "DetokenizeCard")
    # Under the development switch INTERPAY_PLAINTEXT=1: admitted, and named so the audit
    # log shows it.
    unverified = authorize(_Context(None), "DetokenizeCard", require_identity=False)
    assert str(unverified) == "unverified:ipv4:127.0.0.1:40000"


def test_key_administration_is_for_operators_only() -> None:
    operator = _Context(f"spiffe://interpay.local/ns/interpay/sa/{OPERATOR}".encode())
    orchestrator = _Context(b"spiffe://interpay.local/ns/interpay/sa/orchestrator")
    for rpc in ("RotateDataKey", "GetKeyStatus"):
        assert str(authorize(operator, rpc)) == OPERATOR
        with pytest.raises(PermissionDenied):
            authorize(orchestrator, rpc)
