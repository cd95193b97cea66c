"""Where the controller is and how to reach it: address parsing, channel, authorization."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from fedgrpc.errors import InvalidArgument
from fedgrpc.rpc.channel import CLIENT_KEEPALIVE_OPTIONS
from fedgrpc.rpc.server import message_size_options

DEFAULT_PORT = 12080
TOKEN_ENV = "FEDGRPC_AUTH_TOKEN"
DEFAULT_AUTH_SCHEME = "Bearer"
# Listings (rounds with per-client details) can outgrow gRPC's 4 MiB default message size.
MAX_MESSAGE_SIZE = 64 << 20
# Scheme -> whether it implies TLS. http(s) are accepted because FEDn users pass REST URLs.
_SCHEMES = {"grpc": False, "grpcs": True, "http": False, "https": True}


@dataclass(frozen=True, kw_only=True)
class Target:
    host: str
    port: int
    secure: bool

    @property
    def address(self) -> str:
        """``host:port`` as gRPC wants it (IPv6 literals in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_target(host: str, port: int | None = None, secure: bool = False) -> Target:
    """Accept ``host``, ``host:port``, ``[v6]:port`` or ``grpc[s]://host:port``.

    A port given both in ``host`` and as ``port`` must agree; ``grpcs://`` (or ``https://``)
    turns TLS on.
    """
    text = host.strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "", text
    elif scheme.lower() not in _SCHEMES:
        raise InvalidArgument(f"controller address {host!r}: unknown scheme {scheme!r}")
    parts = urlsplit(f"//{rest}")
    try:
        address_port = parts.port
    except ValueError:
        raise InvalidArgument(f"controller address {host!r}: the port is not valid") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
        raise InvalidArgument(
            f"controller address {host!r}: expected host, host:port or grpc://host:port"
        )
    if port is not None and address_port is not None and port != address_port:
        raise InvalidArgument(f"controller address {host!r} disagrees with port={port}")
    return Target(
        host=parts.hostname,
        port=address_port or port or DEFAULT_PORT,
        secure=secure or _SCHEMES.get(scheme.lower(), False),
    )


def auth_metadata(token: str | None, auth_scheme: str | None) -> tuple[tuple[str, str], ...]:
    """The ``authorization`` metadata for ``token`` (or ``$FEDGRPC_AUTH_TOKEN``), if any."""
    token = token or os.environ.get(TOKEN_ENV)
    if not token:
        return ()
    return (("authorization", f"{auth_scheme or DEFAULT_AUTH_SCHEME} {token}"),)


def open_channel(
    target: Target,
    *,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
) -> grpc.Channel:
    """A sync channel to ``target``: TLS (verified against ``root_certificates`` or gRPC's
    default roots) when ``target.secure``, plain otherwise."""
    options = [*CLIENT_KEEPALIVE_OPTIONS, *message_size_options(MAX_MESSAGE_SIZE)]
    if target.secure:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
        )
        return grpc.secure_channel(target.address, credentials, options=options)
    return grpc.insecure_channel(target.address, options=options)
