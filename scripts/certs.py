"""The local mesh's certificate authority and one mTLS certificate per identity.

    python scripts/certs.py [--profile dev|test|bench|work]

writes what is missing under `.data/<profile>/certs/` (scripts/mesh.py calls it on `up`):
`ca.pem` / `ca-key.pem`, and `<name>.pem` / `<name>-key.pem` for every service, for the
Envoy gateway and for `operator`, the identity of engineers with grpcurl and of the test
suite. Each certificate names its holder with a SPIFFE id as URI SAN
(`spiffe://interpay.local/ns/interpay/sa/<name>`, as Istio issues), `<name>.interpay.svc`
and `localhost` as DNS SANs and 127.0.0.1 as IP SAN, and serves as both server and client.
Existing files are kept; a certificate is reissued only when it is missing, due to expire
within 30 days, or not signed by the current CA. Under Istio the mesh's CA replaces all this.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

from cryptography import x509  # noqa: E402
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from services.framework.identity import dns_name, spiffe_id  # noqa: E402
from services.framework.topology import GATEWAY, OPERATOR, PROFILES, SERVICES  # noqa: E402

IDENTITIES = (*(s.name for s in SERVICES), GATEWAY, OPERATOR)
CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_WITHIN = dt.timedelta(days=30)

Key = ec.EllipticCurvePrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600 if private else 0o644)
    os.replace(tmp, path)  # a reader never sees half a file


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def new_ca(common_name: str = "InterPay local mesh CA") -> tuple[Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(ca_key: Key, ca_cert: x509.Certificate, name: str) -> tuple[Key, x509.Certificate]:
    """A server-and-client certificate for identity `name`, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name(name))]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(spiffe_id(name)),
                    x509.DNSName(dns_name(name)),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def write_pair(directory: Path, name: str, key: Key, cert: x509.Certificate) -> None:
    _write(directory / f"{name}-key.pem", key_pem(key), private=True)
    _write(directory / f"{name}.pem", cert_pem(cert))


def _current(path: Path, ca_cert: x509.Certificate) -> bool:
    if not path.exists() or not path.with_name(path.stem + "-key.pem").exists():
        return False
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    if cert.not_valid_after_utc - _now() < RENEW_WITHIN:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False  # issued by an earlier CA
    return True


def _load_ca(directory: Path) -> tuple[Key, x509.Certificate] | None:
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if not (cert_path.exists() and key_path.exists()):
        return None
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.not_valid_after_utc - _now() < RENEW_WITHIN:
        return None
    return key, cert


def ensure(directory: Path, identities: tuple[str, ...] = IDENTITIES) -> list[str]:
    """Creates the CA and the certificates that are missing or stale; returns the names issued."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    issued = []
    ca = _load_ca(directory)
    if ca is None:
        ca = new_ca()
        write_pair(directory, "ca", *ca)
        issued.append("ca")
    for name in identities:
        if not _current(directory / f"{name}.pem", ca[1]):
            write_pair(directory, name, *issue(*ca, name))
            issued.append(name)
    return issued


def certs_dir(profile: str) -> Path:
    return ROOT / ".data" / profile / "certs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profile", default=os.environ.get("INTERPAY_PROFILE", "dev"), choices=sorted(PROFILES)
    )
    args = parser.parse_args()
    directory = certs_dir(args.profile)
    issued = ensure(directory)
    print(f"certificates in {directory}: {'issued ' + ', '.join(issued) if issued else 'all current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
