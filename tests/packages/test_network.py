"""A client started with ``--package-from-controller`` joins and trains, all as processes.

Controller, combiner and client are started through the CLI (``fedgrpc.launch.start_daemon``)
on port 0; the session is driven through the raw ControlService stubs, as
``fedgrpc/quickstart/run.py`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from fedgrpc.launch import Daemon, start_daemon
from fedgrpc.model.serialization import dump_model
from fedgrpc.packages import build_package
from fedgrpc.packages.transfer import package_stream
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.proto.control.v1 import control_pb2_grpc
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc
from fedgrpc.quickstart import digits
from fedgrpc.security.bearer import bearer_channel
from fedgrpc.security.keystore import mint_token, read_admin_token
from fedgrpc.security.tokens import Role
from fedgrpc.transfer import model_stream

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits-package"
FAST = {
    f"FEDGRPC_{role}_{key}": value
    for role in ("CONTROLLER", "COMBINER")
    for key, value in (("HEARTBEAT_INTERVAL", "0.5"), ("HEARTBEAT_TIMEOUT", "5"))
}
T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None], daemons: list[Daemon], what: str, timeout: float = 30
) -> T:
    """Poll ``probe`` until truthy; fail early, with the logs, when a daemon has died."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        dead = [d for d in daemons if not d.alive]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(f"--- {d.name}\n{d.log_tail()}" for d in daemons)
            pytest.fail(
                f"waiting for {what}: {'exited: ' + dead[0].name if dead else 'timeout'}\n{logs}"
            )
        time.sleep(0.1)
    return value


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in reversed(started):
            daemon.stop()


def test_client_runs_the_controllers_package(tmp_path: Path, daemons: list[Daemon]) -> None:
    logs = tmp_path / "logs"
    controller = start_daemon(
        "controller",
        ["controller", "start", "--port", "0", "--data-dir", str(tmp_path / "controller")],
        log_dir=logs,
        env=FAST,
    )
    daemons.append(controller)
    keys = tmp_path / "controller"
    daemons.append(
        start_daemon(
            "combiner",
            ["combiner", "start", "--controller", controller.address, "--name", "combiner-0"],
            log_dir=logs,
            env={**FAST, "FEDGRPC_COMBINER_TOKEN": mint_token(keys, "combiner-0", Role.COMBINER)},
        )
    )
    with grpc.insecure_channel(controller.address) as plain:
        channel = bearer_channel(plain, read_admin_token(keys))
        control = control_pb2_grpc.ControlServiceStub(channel)
        package = _upload_package(control)
        token = mint_token(keys, "site-1", Role.CLIENT)
        daemons.append(_start_client(controller.address, tmp_path / "cache", logs, token))
        wait_for(lambda: _clients_online(control) >= 1, daemons, "the client to join")
        _upload_seed(channel, control)
        session = control.StartSession(
            pb.StartSessionRequest(rounds=1, round_timeout=30, min_clients=1, requested_clients=1)
        )
        done = wait_for(lambda: _finished(control, session.id), daemons, "the session to end")
        assert done.status == "finished", done.reason
        (round_,) = control.ListRounds(pb.ListRoundsRequest(session_id=session.id)).result
        assert round_.status == "success"
        assert round_.num_updates == 1
        validations = wait_for(
            lambda: (
                control.ListValidations(pb.ListValidationsRequest(session_id=session.id)).result
            ),
            daemons,
            "the package's validate to report",
        )
    assert validations[0].sender_name == "site-1"
    assert 0.0 <= validations[0].metrics["accuracy"] <= 1.0
    extracted = tmp_path / "cache" / package.sha256
    assert (extracted / "client.py").read_bytes() == (EXAMPLE / "client.py").read_bytes()
    assert "digits package ready" in daemons[-1].log_path.read_text()  # startup ran


def _upload_package(control: Any) -> pb.Package:
    data = build_package(EXAMPLE)
    header = pb.PackageHeader(file_name="digits.tar.gz")
    package: pb.Package = control.UploadPackage(iter(package_stream(data, header=header)))
    control.SetActivePackage(pb.SetActivePackageRequest(id=package.id))
    return package


def _start_client(controller: str, cache: Path, logs: Path, token: str) -> Daemon:
    args = ["client", "start", "--controller", controller, "--name", "site-1"]
    args += ["--data-dir", str(logs.parent / "nodes" / "site-1")]
    env = {
        "FEDGRPC_CLIENT_TOKEN": token,
        "FEDGRPC_QUICKSTART_CLIENT": "0",
        "FEDGRPC_QUICKSTART_CLIENTS": "2",
        "FEDGRPC_CLIENT_HEARTBEAT_INTERVAL": "0.5",
    }
    return start_daemon(
        "client",
        [*args, "--package-from-controller", "--package-dir", str(cache)],
        log_dir=logs,
        env=env,
    )


def _clients_online(control: Any) -> int:
    return int(control.GetControllerStatus(pb.GetControllerStatusRequest()).clients_online)


def _upload_seed(channel: grpc.Channel, control: Any) -> None:
    stream = model_stream(dump_model(digits.initial_model()), header=model_pb2.ModelHeader())
    response = model_pb2_grpc.ModelServiceStub(channel).Upload(iter(stream))
    control.SetActiveModel(pb.SetActiveModelRequest(model_id=response.model_id))


def _finished(control: Any, session_id: str) -> pb.Session | None:
    session: pb.Session = control.GetSession(pb.GetSessionRequest(id=session_id))
    return session if session.status in ("finished", "failed", "stopped") else None
