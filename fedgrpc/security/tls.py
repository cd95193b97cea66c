"""Loading certificates into gRPC credentials, and reading the peer's identity under mTLS.

gRPC only reports a bad PEM file when the first handshake fails, far from the cause; these
helpers parse and cross-check the files up front so a daemon refuses to start with a message
that names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedgrpc.errors import InvalidArgument
from fedgrpc.security._files import PathLike, read_file

# The auth-context property gRPC fills from a verified client certificate's subject CN.
_CN_PROPERTY = "x509_common_name"


def server_credentials(
    cert: PathLike,
    key: PathLike,
    ca: PathLike | None = None,
    require_client_cert: bool = False,
) -> grpc.ServerCredentials:
    """TLS for a server; with ``require_client_cert`` (mTLS) clients need a cert from ``ca``."""
    if require_client_cert and ca is None:
        raise InvalidArgument("mutual TLS needs the CA file that client certificates chain to")
    cert_pem, key_pem = _load_pair(cert, key)
    ca_pem = _load_certificates(ca, "CA certificate") if ca is not None else None
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=ca_pem,
        require_client_auth=require_client_cert,
    )


def channel_credentials(
    ca: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
) -> grpc.ChannelCredentials:
    """TLS for a channel, trusting ``ca`` (system roots when None), with an optional client
    certificate for mTLS (``cert`` and ``key`` go together)."""
    if (cert is None) != (key is None):
        raise InvalidArgument("a client certificate needs both its certificate and key files")
    ca_pem = _load_certificates(ca, "CA certificate") if ca is not None else None
    if cert is None or key is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    cert_pem, key_pem = _load_pair(cert, key)
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )


def peer_identity(context: Any) -> str | None:
    """The CN of the client certificate gRPC verified for this call (mTLS), else None.

    ``context`` is a (sync or aio) ``ServicerContext``. Without mTLS there is no verified
    certificate and the answer is None, never a name the peer merely claimed.
    """
    values = context.auth_context().get(_CN_PROPERTY) or []
    return values[0].decode("utf-8", "replace") if values else None


def _load_certificates(path: PathLike, what: str) -> bytes:
    pem = read_file(path, what)
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise InvalidArgument(f"{what} {str(path)!r} is not a PEM certificate") from None
    return pem


def _load_pair(cert: PathLike, key: PathLike) -> tuple[bytes, bytes]:
    """The PEM bytes of a certificate (chain) and its key, after checking that they match."""
    cert_pem = _load_certificates(cert, "certificate")
    key_pem = read_file(key, "private key")
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):  # TypeError: the key is encrypted
        raise InvalidArgument(f"private key {str(key)!r} is not an unencrypted PEM key") from None
    leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    if _public_der(leaf.public_key()) != _public_der(private_key.public_key()):
        raise InvalidArgument(f"private key {str(key)!r} does not match certificate {str(cert)!r}")
    return cert_pem, key_pem


def _public_der(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


class _TlsConfigured(Protocol):
    """What a daemon config (fedgrpc.config.TlsSettings) offers; frozen, so read-only."""

    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...
    @property
    def tls_ca(self) -> Path | None: ...
    @property
    def require_client_cert(self) -> bool: ...


def server_credentials_for(settings: _TlsConfigured) -> grpc.ServerCredentials | None:
    """Server credentials from a daemon's config; None means plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return server_credentials(
        settings.tls_cert,
        settings.tls_key,
        settings.tls_ca,
        require_client_cert=settings.require_client_cert,
    )


def channel_credentials_for(settings: _TlsConfigured) -> grpc.ChannelCredentials | None:
    """Credentials for a daemon's outgoing channels: TLS when it has a CA to verify peers
    with, presenting its own certificate (for peers that require one); None = plaintext."""
    if settings.tls_ca is None:
        return None
    return channel_credentials(settings.tls_ca, settings.tls_cert, settings.tls_key)
