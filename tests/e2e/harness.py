"""Running fedgrpc daemons as separate processes and driving a controller, for the e2e tests.

Every daemon is ``python -m fedgrpc <role> start ...`` with ``--port 0`` (except where a test
must restart a controller on the same address), its stderr kept in a file under the test's
temporary directory, and its JSON ready line read from stdout with a deadline.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import blake3
import grpc
import numpy as np
import pytest

from fedgrpc.errors import FedgrpcError
from fedgrpc.launch import Daemon, start_daemon
from fedgrpc.model.serialization import dump_model, load_model, named_to_list
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.proto.control.v1 import control_pb2_grpc
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc
from fedgrpc.security.bearer import bearer_channel
from fedgrpc.security.keystore import mint_token, read_admin_token
from fedgrpc.security.tokens import Role
from tests.e2e import clients as test_clients

REPO_ROOT = Path(__file__).resolve().parents[2]

READY_TIMEOUT = 30.0  # seconds a daemon may take to print its ready line
STOP_TIMEOUT = 8.0  # seconds a daemon may take to exit after SIGTERM before it is killed
RPC_TIMEOUT = 10.0  # every control call is bounded
POLL_INTERVAL = 0.1
UPLOAD_CHUNK = 64 * 1024
TERMINAL_SESSION_STATES = ("finished", "failed", "stopped")

# Short heartbeats and reconnect delays so lost peers are noticed within seconds. Each daemon
# reads only its own role's variables, so every process gets the same set.
FAST_SETTINGS = {
    "FEDGRPC_CONTROLLER_HEARTBEAT_INTERVAL": "0.3",
    "FEDGRPC_CONTROLLER_HEARTBEAT_TIMEOUT": "4",
    "FEDGRPC_COMBINER_HEARTBEAT_INTERVAL": "0.3",
    "FEDGRPC_COMBINER_HEARTBEAT_TIMEOUT": "4",
    "FEDGRPC_CLIENT_HEARTBEAT_INTERVAL": "0.3",
    "FEDGRPC_CLIENT_RECONNECT_BASE_DELAY": "0.1",
    "FEDGRPC_CLIENT_RECONNECT_MAX_DELAY": "1",
}

T = TypeVar("T")


def free_port() -> int:
    """A port that was free a moment ago (bind to 0, read it, close).

    Only for restarting a controller on the same address: combiners and clients keep dialling
    the address they were given, so the restarted controller cannot pick a new port. There is
    a small window in which another process could take the port; everything else uses
    ``--port 0``.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}; last value: {value!r}")
        time.sleep(interval)


# --- daemons ---------------------------------------------------------------------------------


def wait_ready(daemon: Daemon, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    """The daemon's ready line, or a test failure showing why it never came."""
    try:
        return daemon.wait_ready(timeout)
    except FedgrpcError as exc:
        pytest.fail(str(exc))


@dataclass(frozen=True)
class ClientSpec:
    """One test client: its index (name ``c<index>``), behaviour and train duration."""

    index: int
    behaviour: str = ""
    train_seconds: float = 0.0

    @property
    def name(self) -> str:
        return test_clients.client_name(self.index)


class Cluster:
    """Starts daemons for one test and stops every one of them afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.marker_dir = root / "markers"
        self.marker_dir.mkdir(exist_ok=True)
        self.daemons: list[Daemon] = []
        # The data directory of the controller started last: its key signs every token.
        self.keys = root / "controller-data"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("FEDGRPC_")}
        python_path = [str(REPO_ROOT), *filter(None, [inherited.get("PYTHONPATH")])]
        self.env = {
            **inherited,
            **FAST_SETTINGS,
            "PYTHONPATH": os.pathsep.join(python_path),
            "PYTHONUNBUFFERED": "1",
        }

    def spawn(self, label: str, args: Sequence[str], env: Mapping[str, str] = {}) -> Daemon:
        if any(d.name == label for d in self.daemons):
            label = f"{label}-{len(self.daemons)}"
        daemon = start_daemon(
            label,
            args,
            log_dir=self.log_dir,
            env=env,
            base_env=self.env,
            cwd=REPO_ROOT,
            wait_ready=False,
        )
        self.daemons.append(daemon)
        return daemon

    def start_controller(
        self, *, data_dir: Path | None = None, port: int = 0, label: str = "controller"
    ) -> Daemon:
        data_dir = data_dir or self.root / "controller-data"
        self.keys = data_dir
        args = ["controller", "start", "--port", str(port), "--data-dir", str(data_dir)]
        daemon = self.spawn(label, args)
        wait_ready(daemon)
        return daemon

    @property
    def admin_token(self) -> str:
        return read_admin_token(self.keys)

    def token(self, role: Role, subject: str) -> str:
        return mint_token(self.keys, subject, role)

    def token_file(self, role: Role, subject: str) -> Path:
        path = self.root / "tokens" / subject
        path.parent.mkdir(exist_ok=True)
        path.write_text(self.token(role, subject) + "\n")
        return path

    def start_combiners(self, controller: str, names: Iterable[str]) -> list[Daemon]:
        # Combiners read their token from a file (--token-file, as the compose stack does);
        # clients get theirs from the environment: both ways stay exercised.
        started = [
            self.spawn(
                name,
                [
                    *("combiner", "start", "--controller", controller, "--name", name),
                    *("--port", "0", "--token-file", str(self.token_file(Role.COMBINER, name))),
                ],
            )
            for name in names
        ]
        for daemon in started:
            wait_ready(daemon)
        return started

    def start_clients(self, controller: str, specs: Iterable[ClientSpec]) -> dict[str, Daemon]:
        started: dict[str, Daemon] = {}
        for spec in specs:
            env = {
                test_clients.INDEX_ENV: str(spec.index),
                test_clients.BEHAVIOUR_ENV: spec.behaviour,
                test_clients.TRAIN_SECONDS_ENV: str(spec.train_seconds),
                test_clients.MARKER_DIR_ENV: str(self.marker_dir),
                "FEDGRPC_CLIENT_TOKEN": self.token(Role.CLIENT, spec.name),
            }
            args = ["client", "start", "--controller", controller, "--name", spec.name]
            args += ["--data-dir", str(self.root / "nodes" / spec.name)]
            started[spec.name] = self.spawn(spec.name, [*args, "--entry", "tests.e2e.clients"], env)
        for daemon in started.values():
            wait_ready(daemon)
        return started

    def stop_all(self) -> dict[str, int]:
        """SIGTERM everything (newest first), then wait for each, killing stragglers.

        Returns each daemon's exit code (negative: ended by that signal number). Daemons
        already stopped keep the code they ended with.
        """
        for daemon in reversed(self.daemons):
            daemon.terminate()
        return {daemon.name: daemon.wait_stopped() for daemon in reversed(self.daemons)}

    def report(self, lines: int = 40) -> str:
        parts = []
        for daemon in self.daemons:
            code = daemon.process.returncode
            state = "running" if code is None else f"exit code {code}"
            parts.append(f"===== {daemon.name} ({state}) =====\n{daemon.log_tail(lines)}")
        return "\n".join(parts)


# --- the control API -------------------------------------------------------------------------


class ControlClient:
    """A thin synchronous wrapper over the controller's ControlService and ModelService."""

    def __init__(self, address: str, token: str | None) -> None:
        self.address = address
        self.channel = bearer_channel(grpc.insecure_channel(address), token)
        self.control = control_pb2_grpc.ControlServiceStub(self.channel)
        self.models = model_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()  # closes the underlying channel too

    # models

    def upload_model(self, arrays: Sequence[np.ndarray]) -> str:
        data = dump_model(list(arrays))
        header = model_pb2.ModelHeader(total_size=len(data), digest=blake3.blake3(data).hexdigest())
        messages = [model_pb2.ModelChunk(header=header)] + [
            model_pb2.ModelChunk(data=data[start : start + UPLOAD_CHUNK])
            for start in range(0, len(data), UPLOAD_CHUNK)
        ]
        response = self.models.Upload(iter(messages), timeout=RPC_TIMEOUT)
        assert response.size == len(data)
        return str(response.model_id)

    def download_model(self, model_id: str) -> list[np.ndarray]:
        stream = self.models.Download(
            model_pb2.DownloadRequest(model_id=model_id), timeout=RPC_TIMEOUT
        )
        header: model_pb2.ModelHeader | None = None
        data = bytearray()
        for message in stream:
            if message.HasField("header"):
                assert header is None, "a download stream carries exactly one header"
                header = message.header
            else:
                assert header is not None, "a download stream starts with its header"
                data += message.data
        assert header is not None
        assert len(data) == header.total_size
        assert blake3.blake3(data).hexdigest() == header.digest
        return named_to_list(load_model(bytes(data)))

    def seed(self, arrays: Sequence[np.ndarray]) -> str:
        """Upload a seed model and make it the active one."""
        model_id = self.upload_model(arrays)
        self.control.SetActiveModel(
            pb.SetActiveModelRequest(model_id=model_id), timeout=RPC_TIMEOUT
        )
        return model_id

    # sessions and rounds

    def start_session(self, **settings: Any) -> pb.Session:
        session: pb.Session = self.control.StartSession(
            pb.StartSessionRequest(**settings), timeout=RPC_TIMEOUT
        )
        return session

    def session(self, session_id: str) -> pb.Session:
        session: pb.Session = self.control.GetSession(
            pb.GetSessionRequest(id=session_id), timeout=RPC_TIMEOUT
        )
        return session

    def wait_session_end(self, session_id: str, timeout: float) -> pb.Session:
        def ended() -> pb.Session | None:
            session = self.session(session_id)
            return session if session.status in TERMINAL_SESSION_STATES else None

        session = wait_until(ended, timeout=timeout, what=f"session {session_id} to end")
        assert session is not None
        return session

    def rounds(self, session_id: str) -> list[pb.Round]:
        found = self.control.ListRounds(
            pb.ListRoundsRequest(session_id=session_id), timeout=RPC_TIMEOUT
        )
        return sorted(found.result, key=lambda r: r.round_number)

    # network

    def controller_status(self) -> pb.ControllerStatus:
        status: pb.ControllerStatus = self.control.GetControllerStatus(
            pb.GetControllerStatusRequest(), timeout=RPC_TIMEOUT
        )
        return status

    def clients(self, status: str | None = None) -> list[pb.Client]:
        request = (
            pb.ListClientsRequest() if status is None else pb.ListClientsRequest(status=status)
        )
        found = self.control.ListClients(request, timeout=RPC_TIMEOUT)
        return list(found.result)

    def client(self, name: str) -> pb.Client:
        client: pb.Client = self.control.GetClient(
            pb.GetClientRequest(id=name), timeout=RPC_TIMEOUT
        )
        return client

    def wait_combiners_online(self, count: int, timeout: float = 20.0) -> None:
        wait_until(
            lambda: self.controller_status().combiners_online >= count,
            timeout=timeout,
            what=f"{count} combiner(s) linked to the controller",
        )

    def wait_clients_online(self, count: int, timeout: float = 30.0) -> None:
        wait_until(
            lambda: self.controller_status().clients_online >= count,
            timeout=timeout,
            what=f"{count} client(s) connected",
        )


# --- the FedAvg reference --------------------------------------------------------------------


def seed_arrays() -> list[np.ndarray]:
    """A small float64 model: two arrays, named "0" and "1" on the wire."""
    return [np.arange(6, dtype=np.float64).reshape(2, 3) * 0.25 - 0.5, np.ones(4, np.float64)]


def fedavg_reference(previous: Sequence[np.ndarray], names: Iterable[str]) -> list[np.ndarray]:
    """FedAvg of the test clients ``names`` trained from ``previous``, weighted by examples."""
    indices = sorted(test_clients.client_index(name) for name in names)
    assert indices, "FedAvg of no clients is undefined"
    weights = {i: float(test_clients.num_examples(i)) for i in indices}
    total = sum(weights.values())
    averaged = []
    for array in previous:
        weighted_sum = np.zeros(np.shape(array), np.float64)
        for i in indices:
            weighted_sum += weights[i] * (np.asarray(array, np.float64) + test_clients.delta(i))
        averaged.append(weighted_sum / total)
    return averaged


def ok_clients(round_: pb.Round) -> set[str]:
    """Clients whose update the round's combiners report as folded in."""
    return {c.client_name for comb in round_.combiners for c in comb.clients if c.status == "ok"}


def client_reports(round_: pb.Round) -> dict[str, pb.RoundClient]:
    return {c.client_name: c for comb in round_.combiners for c in comb.clients}


def check_committed_models(
    api: ControlClient,
    rounds: Sequence[pb.Round],
    *,
    seed_id: str,
    expected_clients: Mapping[int, set[str]] | None = None,
) -> list[str]:
    """Every successful round committed the FedAvg of its clients' updates of its input model.

    The successful rounds must chain (each starts from the previous one's commit, the first
    from ``seed_id``). ``expected_clients`` pins round number -> the clients whose updates must
    be in it; other rounds use the clients the round reports as ok. Returns the committed ids.
    """
    committed: list[str] = []
    previous_id = seed_id
    for round_ in rounds:
        if round_.status != "success":
            continue
        assert round_.model_id == previous_id, f"round {round_.round_number} input model"
        contributors = ok_clients(round_)
        if expected_clients is not None and round_.round_number in expected_clients:
            assert contributors == expected_clients[round_.round_number], (
                f"round {round_.round_number} contributors"
            )
        weights = [test_clients.num_examples(test_clients.client_index(n)) for n in contributors]
        assert round_.num_updates == len(contributors)
        assert round_.total_weight == pytest.approx(sum(weights))
        expected = fedavg_reference(api.download_model(round_.model_id), contributors)
        actual = api.download_model(round_.committed_model_id)
        assert len(actual) == len(expected)
        for got, want in zip(actual, expected, strict=True):
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
        record = api.control.GetModel(
            pb.GetModelRequest(id=round_.committed_model_id), timeout=RPC_TIMEOUT
        )
        assert record.parent_model == round_.model_id
        assert record.round_number == round_.round_number
        committed.append(round_.committed_model_id)
        previous_id = round_.committed_model_id
    return committed
