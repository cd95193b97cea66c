"""TLS and mutual TLS with certificates from the development CA, on real servers."""

from __future__ import annotations

import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedgrpc.errors import InvalidArgument
from fedgrpc.rpc.server import Service
from fedgrpc.security import (
    AuthInterceptor,
    Role,
    ServerKind,
    bearer_call_credentials,
    channel_credentials,
    issue_certificate,
    peer_identity,
    server_credentials,
)
from tests.security.conftest import Pki, Tokens
from tests.security.helpers import start_kind_server

pytestmark = pytest.mark.timeout(30)

WHOAMI = "/fedgrpc.test.Identity/Whoami"
# A refused handshake must fail the call promptly, not hang until the deadline.
FAIL_FAST = 5.0


async def _whoami(request: bytes, context: Any) -> bytes:
    return (peer_identity(context) or "").encode()


_IDENTITY = Service(
    servicer=grpc.method_handlers_generic_handler(
        "fedgrpc.test.Identity", {"Whoami": grpc.unary_unary_rpc_method_handler(_whoami)}
    ),
    add_to_server=lambda handler, server: server.add_generic_rpc_handlers((handler,)),
    name="fedgrpc.test.Identity",
)


async def _tls_server(creds: grpc.ServerCredentials) -> AsyncIterator[str]:
    server = await start_kind_server(
        ServerKind.COMBINER, None, credentials=creds, extra=[_IDENTITY]
    )
    try:
        yield server.address
    finally:
        await server.stop(None)


async def _health(address: str, creds: grpc.ChannelCredentials) -> grpc.StatusCode:
    async with grpc.aio.secure_channel(address, creds) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=FAIL_FAST * 2
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def _whoami_call(address: str, creds: grpc.ChannelCredentials) -> str:
    async with grpc.aio.secure_channel(address, creds) as channel:
        reply: bytes = await channel.unary_unary(WHOAMI)(b"", timeout=FAIL_FAST)
    return reply.decode()


async def test_tls_server_with_a_certificate_from_certs_init(pki: Pki) -> None:
    creds = server_credentials(pki.server.cert, pki.server.key)
    async for address in _tls_server(creds):
        assert await _health(address, channel_credentials(pki.ca.cert)) == grpc.StatusCode.OK
        localhost = address.replace("127.0.0.1", "localhost")
        assert await _health(localhost, channel_credentials(pki.ca.cert)) == grpc.StatusCode.OK
        started = time.monotonic()
        code = await _health(address, channel_credentials(pki.other_ca.cert))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < FAIL_FAST
        # No client certificate is asked for, so there is no peer identity.
        assert await _whoami_call(address, channel_credentials(pki.ca.cert)) == ""


async def test_mutual_tls(pki: Pki) -> None:
    creds = server_credentials(pki.server.cert, pki.server.key, pki.ca.cert, True)
    async for address in _tls_server(creds):
        mine = channel_credentials(pki.ca.cert, pki.client.cert, pki.client.key)
        assert await _health(address, mine) == grpc.StatusCode.OK
        assert await _whoami_call(address, mine) == "site-1"
        for name, refused in {
            "no client certificate": channel_credentials(pki.ca.cert),
            "certificate from another CA": channel_credentials(
                pki.ca.cert, pki.other_client.cert, pki.other_client.key
            ),
        }.items():
            started = time.monotonic()
            assert await _health(address, refused) == grpc.StatusCode.UNAVAILABLE, name
            assert time.monotonic() - started < FAIL_FAST, name


async def test_tokens_as_call_credentials_over_tls(pki: Pki, tokens: Tokens) -> None:
    server = await start_kind_server(
        ServerKind.COMBINER,
        AuthInterceptor(tokens.verifier(), ServerKind.COMBINER),
        credentials=server_credentials(pki.server.cert, pki.server.key),
    )
    creds = grpc.composite_channel_credentials(
        channel_credentials(pki.ca.cert), bearer_call_credentials(tokens.token(Role.CLIENT))
    )
    try:
        async with grpc.aio.secure_channel(server.address, creds) as channel:
            call = channel.unary_stream("/fedgrpc.model.v1.ModelService/Download")(b"", timeout=5)
            assert [reply async for reply in call] == [b"client-1"]
    finally:
        await server.stop(None)


def test_certificates_have_the_right_extensions(pki: Pki) -> None:
    ca = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    server = x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    client = x509.load_pem_x509_certificate(pki.client.cert.read_bytes())
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for files in (pki.ca, pki.server, pki.client):
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o600


def test_issue_with_hosts_and_both_usages(pki: Pki, tmp_path: Path) -> None:
    files = issue_certificate(
        pki.dir, "combiner-a", server=True, client=True, hosts=["cmb.example", "::1"], out=tmp_path
    )
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["cmb.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["::1"]
    with pytest.raises(InvalidArgument, match="overwrite"):
        issue_certificate(pki.dir, "combiner-a", client=True, out=tmp_path)
    with pytest.raises(InvalidArgument, match="neither an IP address nor a DNS name"):
        issue_certificate(pki.dir, "bad", server=True, hosts=["a/b"], out=tmp_path)
    with pytest.raises(InvalidArgument, match="certificate name"):
        issue_certificate(pki.dir, "../x", client=True, out=tmp_path)


def test_loading_errors_name_the_file(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(InvalidArgument, match=r"nope\.pem' does not exist"):
        server_credentials(missing, pki.server.key)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(InvalidArgument, match=r"junk\.pem' is not a PEM certificate"):
        channel_credentials(junk)
    with pytest.raises(InvalidArgument, match="does not match"):
        server_credentials(pki.server.cert, pki.client.key)
    with pytest.raises(InvalidArgument, match="is not an unencrypted PEM key"):
        server_credentials(pki.server.cert, junk)
    with pytest.raises(InvalidArgument, match="CA file"):
        server_credentials(pki.server.cert, pki.server.key, require_client_cert=True)
    with pytest.raises(InvalidArgument, match="both"):
        channel_credentials(pki.ca.cert, cert=pki.client.cert)
    unreadable = tmp_path / "dir.pem"
    unreadable.mkdir()
    with pytest.raises(InvalidArgument, match="cannot be read"):
        channel_credentials(unreadable)
