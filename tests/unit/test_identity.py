"""mTLS identities: the certificates scripts/certs.py issues (and reissues only when it must),
how a caller's identity is read from them, and allowlists that name only identities that
exist."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from scripts import certs
from services.framework.identity import Caller, dns_name, identify, service_of, spiffe_id
from services.framework.topology import GATEWAY, OPERATOR, SERVICES


class _Context:
    def __init__(self, identities: list[bytes] | None) -> None:
        self.identities = identities

    def peer_identities(self) -> list[bytes] | None:
        return self.identities

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"


def test_every_allowlist_names_only_identities_that_have_a_certificate() -> None:
    for spec in SERVICES:
        for rpc, allowed in spec.internal_callers.items():
            unknown = set(allowed) - set(certs.IDENTITIES)
            assert not unknown, f"{spec.name}.{rpc} admits {unknown}, which no certificate names"
    assert {GATEWAY, OPERATOR} <= set(certs.IDENTITIES)


def test_the_caller_is_the_spiffe_id_whatever_order_the_sans_come_in() -> None:
    sans = [b"localhost", b"wallet.interpay.svc", spiffe_id("orchestrator").encode(), b"127.0.0.1"]
    assert identify(_Context(sans)) == Caller("orchestrator", verified=True)
    assert identify(_Context([b"payments.interpay.svc"])) == Caller("payments", verified=True)
    assert identify(_Context(None)) == Caller("ipv4:127.0.0.1:40000", verified=False)
    assert service_of("spiffe://interpay.local/ns/interpay/sa/vault") == "vault"


def test_a_certificate_names_its_holder_for_both_ends(tmp_path: Path) -> None:
    certs.ensure(tmp_path, ("wallet",))
    cert = x509.load_pem_x509_certificate((tmp_path / "wallet.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id("wallet")]
    assert dns_name("wallet") in sans.get_values_for_type(x509.DNSName)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert (tmp_path / "wallet-key.pem").stat().st_mode & 0o077 == 0  # the key is private


def test_certificates_are_created_once_and_reissued_only_when_they_must(tmp_path: Path) -> None:
    assert certs.ensure(tmp_path, ("wallet", "vault")) == ["ca", "wallet", "vault"]
    first = (tmp_path / "wallet.pem").read_bytes()
    assert certs.ensure(tmp_path, ("wallet", "vault")) == []
    assert (tmp_path / "wallet.pem").read_bytes() == first

    # A certificate about to expire is reissued, alone.
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((tmp_path / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key, cert = certs.issue(ca_key, ca_cert, "vault")
    expiring = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(days=360))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
        .sign(ca_key, hashes.SHA256())
    )
    certs.write_pair(tmp_path, "vault", key, expiring)
    assert certs.ensure(tmp_path, ("wallet", "vault")) == ["vault"]

    # A new CA (the old one lost) reissues every certificate under it.
    (tmp_path / "ca-key.pem").unlink()
    assert certs.ensure(tmp_path, ("wallet", "vault")) == ["ca", "wallet", "vault"]
    assert (tmp_path / "wallet.pem").read_bytes() != first
