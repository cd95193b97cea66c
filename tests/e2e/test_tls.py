"""Mutual TLS and tokens end to end, daemons as processes: a session with TLS and tokens
everywhere, a client with a certificate from another CA refused fast, a plaintext client kept
out, a certificate without a token refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fedgrpc import APIClient
from fedgrpc.cli import main
from fedgrpc.errors import Unauthenticated
from fedgrpc.launch import Daemon, start_daemon
from fedgrpc.model.serialization import dump_model
from fedgrpc.security.keystore import mint_token, read_admin_token
from tests.e2e.harness import FAST_SETTINGS, REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ENV = {**FAST_SETTINGS, "PYTHONPATH": str(REPO_ROOT)}


def certs(tmp_path: Path) -> tuple[Path, Path]:
    """Our development CA with certificates for every party, and an unrelated CA."""
    ours, theirs = tmp_path / "ca", tmp_path / "other-ca"
    runner = CliRunner()
    for out in (ours, theirs):
        result = runner.invoke(main, ["certs", "init", "--out", str(out)])
        assert result.exit_code == 0, result.output
    issues = [
        (ours, "combiner", ["--server", "--client", "--host", "127.0.0.1"]),
        (ours, "c0", ["--client"]),
        (ours, "c1", ["--client"]),
        (ours, "operator", ["--client"]),
        (theirs, "intruder", ["--client"]),
    ]
    for ca, name, flags in issues:
        args = ["certs", "issue", "--ca-dir", str(ca), "--name", name, *flags]
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    return ours, theirs


def mtls(ca: Path, name: str) -> list[str]:
    return [
        "--tls-ca",
        str(ca / "ca.pem"),
        "--tls-cert",
        str(ca / f"{name}.pem"),
        "--tls-key",
        str(ca / f"{name}.key"),
    ]


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[str, Path, Path, list[Daemon]]]:
    ours, theirs = certs(tmp_path)
    logs = tmp_path / "logs"
    daemons: list[Daemon] = []
    server_tls = [*mtls(ours, "server"), "--require-client-cert"]
    keys = tmp_path / "data"
    try:
        args = ["controller", "start", "--port", "0", "--data-dir", str(keys)]
        daemons.append(start_daemon("controller", [*args, *server_tls], log_dir=logs, env=ENV))
        address = daemons[0].address
        combiner = ["combiner", "start", "--controller", address, "--name", "combiner"]
        combiner_tls = [*mtls(ours, "combiner"), "--require-client-cert"]
        combiner_env = {**ENV, "FEDGRPC_COMBINER_TOKEN": mint_token(keys, "combiner", "combiner")}
        daemons.append(
            start_daemon("combiner", [*combiner, *combiner_tls], log_dir=logs, env=combiner_env)
        )
        for index in range(2):
            client = ["client", "start", "--controller", address, "--name", f"c{index}"]
            client += ["--entry", "tests.e2e.clients", *mtls(ours, f"c{index}")]
            client += ["--data-dir", str(tmp_path / "nodes" / f"c{index}")]
            env = {
                **ENV,
                "FEDGRPC_TEST_CLIENT_INDEX": str(index),
                "FEDGRPC_CLIENT_TOKEN": mint_token(keys, f"c{index}", "client"),
            }
            daemons.append(start_daemon(f"c{index}", client, log_dir=logs, env=env))
        yield address, ours, theirs, daemons
    finally:
        for daemon in reversed(daemons):
            daemon.stop()


def operator(address: str, ca: Path, token: str | None) -> APIClient:
    return APIClient(
        address,
        secure=True,
        token=token,
        root_certificates=(ca / "ca.pem").read_bytes(),
        certificate_chain=(ca / "operator.pem").read_bytes(),
        private_key=(ca / "operator.key").read_bytes(),
    )


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_session_with_mutual_tls_everywhere(
    network: tuple[str, Path, Path, list[Daemon]], tmp_path: Path
) -> None:
    address, ours, _, _ = network
    admin = read_admin_token(tmp_path / "data")
    # A certificate from our CA is not enough: without a token every call is refused.
    with operator(address, ours, None) as api, pytest.raises(Unauthenticated):
        api.get_controller_status()
    with operator(address, ours, admin) as api:
        wait_until(lambda: api.get_controller_status()["clients_online"] == 2, 30, "clients")
        seed = tmp_path / "seed.safetensors"
        seed.write_bytes(dump_model([np.zeros(4, dtype=np.float32)]))
        api.set_active_model(str(seed))
        started = api.start_session(rounds=1, min_clients=2, requested_clients=2, round_timeout=30)
        session = api.wait_for_session(started["session_id"], timeout=60, progress=False)
    assert session["status"] == "finished"


def client_args(address: str, name: str, *tls: str) -> list[str]:
    return [
        "client",
        "start",
        "--controller",
        address,
        "--name",
        name,
        "--entry",
        "tests.e2e.clients",
        *tls,
    ]


def test_untrusted_and_plaintext_clients_are_kept_out(
    network: tuple[str, Path, Path, list[Daemon]], tmp_path: Path
) -> None:
    address, ours, theirs, daemons = network
    logs, env = tmp_path / "logs", {**ENV, "FEDGRPC_TEST_CLIENT_INDEX": "5"}

    def start(name: str, *tls: str) -> Daemon:
        args = [*client_args(address, name, *tls), "--data-dir", str(tmp_path / "nodes" / name)]
        daemon = start_daemon(name, args, log_dir=logs, env=env, wait_ready=False)
        daemons.append(daemon)
        return daemon

    # Trusting the wrong CA: the client cannot verify the server, stops at once and says why.
    wrong_trust = start("wrong-trust", *mtls(theirs, "intruder"))
    assert wrong_trust.process.wait(timeout=30) != 0
    assert "TLS handshake failed" in wrong_trust.log_tail(60)
    # A certificate from another CA: the server refuses every handshake (the client only sees
    # the socket close, so it keeps retrying with backoff, and never gets in).
    intruder = start(
        "intruder",
        "--tls-ca",
        str(ours / "ca.pem"),
        "--tls-cert",
        str(theirs / "intruder.pem"),
        "--tls-key",
        str(theirs / "intruder.key"),
    )
    plaintext = start("plaintext")
    for refused in (intruder, plaintext):
        wait_until(
            lambda d=refused: "reconnecting" in d.log_tail(60), 30, f"{refused.name} refused"
        )
    with operator(address, ours, read_admin_token(tmp_path / "data")) as api:
        names = {c["name"] for c in api.get_clients()["result"]}
    assert names == {"c0", "c1"}
