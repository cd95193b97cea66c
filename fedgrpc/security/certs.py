"""A development certificate authority: a self-signed CA, server and client certificates.

Good enough for test networks and for a first deployment inside one organisation; production
deployments would normally use their own PKI and only need :mod:`fedgrpc.security.tls`.
Keys are EC P-256 (small, fast, supported by every TLS stack gRPC uses).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgrpc.errors import InvalidArgument
from fedgrpc.security._files import read_file, refuse_overwrite, write_file
from fedgrpc.security.limits import validate_name

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
CA_DAYS = 3650
LEAF_DAYS = 365
# Certificates start a few minutes in the past so a peer whose clock is slightly behind
# does not reject a certificate issued a moment ago.
_BACKDATE = datetime.timedelta(minutes=5)
CA_CERT = "ca.pem"
CA_KEY = "ca.key"


@dataclass(frozen=True)
class CertFiles:
    """Where a certificate and its private key were written."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class _Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def init_ca(
    out: Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    common_name: str = "fedgrpc development CA",
    days: int = CA_DAYS,
    force: bool = False,
) -> tuple[CertFiles, CertFiles]:
    """Create ``out/ca.pem``+``ca.key`` and a server certificate ``out/server.pem``+``.key``.

    Returns (CA files, server files). Existing files are only replaced with ``force``.
    """
    ca_files = CertFiles(out / CA_CERT, out / CA_KEY)
    server_names = [out / "server.pem", out / "server.key"]
    refuse_overwrite([ca_files.cert, ca_files.key, *server_names], force=force)
    _subject_alt_names(hosts or DEFAULT_HOSTS)  # a bad host must fail before anything is written
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = _base_builder(name, name, key.public_key(), days)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    builder = builder.add_extension(_key_usage(cert_sign=True), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    _write_pair(ca_files, cert, key)
    server = CertFiles(*server_names)
    _sign_leaf(_Authority(cert, key), server, "server", server=True, client=False, hosts=hosts)
    return ca_files, server


def issue_certificate(
    ca_dir: Path,
    name: str,
    *,
    server: bool = False,
    client: bool = False,
    hosts: Sequence[str] = (),
    days: int = LEAF_DAYS,
    out: Path | None = None,
    force: bool = False,
) -> CertFiles:
    """Sign a certificate for ``name`` with the CA in ``ca_dir``; write ``<out>/<name>.pem/.key``.

    ``server`` adds serverAuth and SANs for ``hosts`` (default localhost and 127.0.0.1);
    ``client`` adds clientAuth (the peer identity is the CN, ``name``). Both may be set, e.g.
    for a combiner that serves clients and dials the controller with one certificate.
    """
    validate_name(name, "certificate name")  # it becomes a file name
    if not (server or client):
        raise InvalidArgument("a certificate needs --server, --client or both")
    if days <= 0:
        raise InvalidArgument(f"days: must be positive, got {days}")
    if server:
        _subject_alt_names(hosts or DEFAULT_HOSTS)  # fail on a bad host before loading the CA
    authority = _load_authority(ca_dir)
    target = out or ca_dir
    files = CertFiles(target / f"{name}.pem", target / f"{name}.key")
    refuse_overwrite([files.cert, files.key], force=force)
    _sign_leaf(authority, files, name, server=server, client=client, hosts=hosts, days=days)
    return files


def _sign_leaf(
    ca: _Authority,
    files: CertFiles,
    name: str,
    *,
    server: bool,
    client: bool,
    hosts: Sequence[str],
    days: int = LEAF_DAYS,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = _base_builder(subject, ca.cert.subject, key.public_key(), days)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    builder = builder.add_extension(_key_usage(cert_sign=False), critical=True)
    builder = builder.add_extension(_extended_usage(server=server, client=client), False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
    )
    if server:
        builder = builder.add_extension(_subject_alt_names(hosts or DEFAULT_HOSTS), False)
    _write_pair(files, builder.sign(ca.key, hashes.SHA256()), key)


def _load_authority(ca_dir: Path) -> _Authority:
    """The CA certificate and key from ``ca_dir`` (as written by :func:`init_ca`)."""
    cert_pem = read_file(ca_dir / CA_CERT, "CA certificate")
    key_pem = read_file(ca_dir / CA_KEY, "CA key")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise InvalidArgument(f"CA files in {ca_dir} are not valid PEM: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument(f"CA key in {ca_dir} is not an EC key")
    return _Authority(cert, key)


def _base_builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _extended_usage(*, server: bool, client: bool) -> x509.ExtendedKeyUsage:
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    return x509.ExtendedKeyUsage(usages)


def _subject_alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    """IP literals become IPAddress SANs (TLS clients match IPs only against those)."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # de-duplicated, order kept
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(_dns_name(host)))
    return x509.SubjectAlternativeName(names)


def _dns_name(host: str) -> str:
    labels = host.rstrip(".").split(".")
    valid = all(label and len(label) <= 63 for label in labels)
    if not host or not valid or any(c.isspace() or c in "/:@" for c in host):
        raise InvalidArgument(f"host {host!r} is neither an IP address nor a DNS name")
    return host.rstrip(".")


def _write_pair(files: CertFiles, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file(files.key, key_pem, private=True)
    write_file(files.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
