"""What goes on the wire: the authorization metadata, and TLS verified against a CA.

A small in-test server (a stub ControlService behind an interceptor that records every call's
metadata and refuses calls without the right token) stands in for the controller, so the tests
see exactly what APIClient sends.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedgrpc import errors
from fedgrpc.api import APIClient
from fedgrpc.proto.control.v1 import control_pb2

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret"


ACCEPTED = frozenset({f"Bearer {TOKEN}", "Token other"})


@dataclass
class Recorder(grpc.ServerInterceptor):  # type: ignore[misc]
    """Records (method, metadata) of every call; refuses those without an accepted token."""

    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        metadata = dict(details.invocation_metadata)
        self.calls.append((details.method.rsplit("/", 1)[1], metadata))
        if metadata.get("authorization") not in ACCEPTED:
            return grpc.unary_unary_rpc_method_handler(_refuse)
        return continuation(details)


def _refuse(request: Any, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")


def stub_control_service() -> grpc.GenericRpcHandler:
    """A ControlService answering only GetControllerStatus (anything else: UNIMPLEMENTED)."""

    def status(request: Any, context: Any) -> control_pb2.ControllerStatus:
        return control_pb2.ControllerStatus(state="idle", version="stub")

    handler = grpc.unary_unary_rpc_method_handler(
        status,
        request_deserializer=control_pb2.GetControllerStatusRequest.FromString,
        response_serializer=control_pb2.ControllerStatus.SerializeToString,
    )
    service = control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name
    return grpc.method_handlers_generic_handler(service, {"GetControllerStatus": handler})


@dataclass(frozen=True)
class StubServer:
    plain_port: int
    tls_port: int
    ca_pem: bytes
    recorder: Recorder


def self_signed_certificate() -> tuple[bytes, bytes]:
    """(certificate, key) PEM for 127.0.0.1 and localhost, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedgrpc test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture(scope="module")
def stub_server() -> Iterator[StubServer]:
    certificate, key = self_signed_certificate()
    recorder = Recorder()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        handlers=[stub_control_service()],
        interceptors=[recorder],
    )
    plain_port = server.add_insecure_port("127.0.0.1:0")
    credentials = grpc.ssl_server_credentials([(key, certificate)])
    tls_port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield StubServer(plain_port, tls_port, certificate, recorder)
    finally:
        server.stop(grace=None)


@pytest.fixture
def recorded(stub_server: StubServer) -> list[tuple[str, dict[str, str]]]:
    stub_server.recorder.calls.clear()
    return stub_server.recorder.calls


def test_token_is_sent_with_every_call(
    stub_server: StubServer, recorded: list[tuple[str, dict[str, str]]], tmp_path: Path
) -> None:
    seed = tmp_path / "seed.npz"
    np.savez(seed, np.zeros(2))
    with APIClient("127.0.0.1", port=stub_server.plain_port, token=TOKEN) as api:
        assert api.get_controller_status()["version"] == "stub"
        with pytest.raises(errors.FedgrpcError) as unserved:
            api.set_active_model(str(seed))  # ModelService.Upload: not served by the stub
        assert unserved.value.code == grpc.StatusCode.UNIMPLEMENTED
        api.control.get_controller_status(metadata=[("x-request-id", "42")])
    assert [method for method, _ in recorded] == [
        "GetControllerStatus",
        "Upload",
        "GetControllerStatus",
    ]
    assert all(m["authorization"] == f"Bearer {TOKEN}" for _, m in recorded)
    assert recorded[-1][1]["x-request-id"] == "42"


def test_auth_scheme_and_token_from_the_environment(
    stub_server: StubServer,
    recorded: list[tuple[str, dict[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEDGRPC_AUTH_TOKEN", "other")
    with APIClient(f"127.0.0.1:{stub_server.plain_port}", auth_scheme="Token") as api:
        api.get_controller_status()
    assert recorded[-1][1]["authorization"] == "Token other"


def test_no_token_sends_no_authorization_and_is_refused(
    stub_server: StubServer,
    recorded: list[tuple[str, dict[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FEDGRPC_AUTH_TOKEN", raising=False)
    with (
        APIClient("127.0.0.1", port=stub_server.plain_port) as api,
        pytest.raises(errors.Unauthenticated) as caught,
    ):
        api.get_controller_status()
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" not in recorded[-1][1]


def test_tls_verified_against_the_given_ca(
    stub_server: StubServer, recorded: list[tuple[str, dict[str, str]]]
) -> None:
    address = f"grpcs://127.0.0.1:{stub_server.tls_port}"
    with APIClient(address, token=TOKEN, root_certificates=stub_server.ca_pem) as api:
        assert api.secure is True
        assert api.get_controller_status()["state"] == "idle"
    assert recorded[-1][1]["authorization"] == f"Bearer {TOKEN}"
    with APIClient(
        "127.0.0.1",
        port=stub_server.tls_port,
        secure=True,
        token=TOKEN,
        root_certificates=stub_server.ca_pem,
    ) as api:
        assert api.get_controller_status()["version"] == "stub"


def test_tls_refuses_an_untrusted_server_even_with_verify_false(stub_server: StubServer) -> None:
    with (
        APIClient("127.0.0.1", port=stub_server.tls_port, secure=True, verify=False) as api,
        pytest.raises(errors.Unavailable),
    ):
        api.control.get_controller_status(timeout=5)
