"""``fedgrpc run``: a whole local network training the digits task, then a comparison.

Starts a controller (embedded statestore), one combiner and N client processes (each with a
token minted from the controller's key), uploads the seed model, runs a session, prints one
line per round, and ends with the federated model's test accuracy next to the best single
client trained alone on its own shard for as many epochs. Every process it started is stopped
on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fedgrpc.launch import Daemon, start_daemon
from fedgrpc.model.serialization import dump_model, load_model_list
from fedgrpc.proto.common.v1 import common_pb2
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.proto.control.v1 import control_pb2_grpc
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc
from fedgrpc.quickstart import digits
from fedgrpc.rpc.server import message_size_options
from fedgrpc.security.bearer import bearer_channel
from fedgrpc.security.keystore import mint_token, read_admin_token
from fedgrpc.security.tokens import Role
from fedgrpc.transfer import dict_to_struct, model_stream

FAST_LINKS = {"HEARTBEAT_INTERVAL": "1", "HEARTBEAT_TIMEOUT": "10"}


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    clients: int = 4
    rounds: int = 5
    aggregator: str = "fedavg"
    local_epochs: int = 3
    learning_rate: float = 0.5
    round_timeout: float = 120.0
    data_dir: Path | None = None


@dataclass(frozen=True, kw_only=True)
class RunResult:
    session_status: str
    rounds: list[dict[str, Any]]
    federated_accuracy: float
    best_single_accuracy: float
    best_single_client: int


def run(options: RunOptions, say: Callable[[str], None] = print) -> RunResult:
    with ExitStack() as stack:
        data_dir = options.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        daemons: list[Daemon] = []
        stack.callback(lambda: [d.stop() for d in reversed(daemons)])
        logs = data_dir / "logs"
        say(f"starting a controller, a combiner and {options.clients} clients (logs: {logs})")
        controller = _start_network(options, data_dir, daemons)
        plain = stack.enter_context(
            grpc.insecure_channel(controller.address, options=message_size_options(64 << 20))
        )
        channel = bearer_channel(plain, read_admin_token(data_dir / "controller"))
        control = control_pb2_grpc.ControlServiceStub(channel)
        _wait_for_clients(control, options.clients, daemons)
        _upload_seed(channel, control)
        session = control.StartSession(_session_request(options))
        say(f"session {session.id}: {options.rounds} rounds of {options.aggregator}")
        say(f"{'round':>5}  {'clients':>7}  {'seconds':>7}  {'val. accuracy':>13}")
        rounds = list(_follow_rounds(control, session.id, options, say))
        final = control.GetSession(pb.GetSessionRequest(id=session.id))
        return _compare(channel, final, rounds, options, say)


def _start_network(options: RunOptions, data_dir: Path, daemons: list[Daemon]) -> Daemon:
    logs = data_dir / "logs"
    controller_env = {f"FEDGRPC_CONTROLLER_{k}": v for k, v in FAST_LINKS.items()}
    controller = start_daemon(
        "controller",
        ["controller", "start", "--port", "0", "--data-dir", str(data_dir / "controller")],
        log_dir=logs,
        env=controller_env,
    )
    daemons.append(controller)
    # Tokens go to the daemons through their environment (not argv, which `ps` shows).
    keys = data_dir / "controller"
    combiner_env = {f"FEDGRPC_COMBINER_{k}": v for k, v in FAST_LINKS.items()}
    combiner_env["FEDGRPC_COMBINER_TOKEN"] = mint_token(keys, "combiner-0", Role.COMBINER)
    daemons.append(
        start_daemon(
            "combiner",
            ["combiner", "start", "--controller", controller.address, "--name", "combiner-0"],
            log_dir=logs,
            env=combiner_env,
        )
    )
    for index in range(options.clients):
        env = {
            "FEDGRPC_QUICKSTART_CLIENT": str(index),
            "FEDGRPC_QUICKSTART_CLIENTS": str(options.clients),
            "FEDGRPC_CLIENT_HEARTBEAT_INTERVAL": "1",
            "FEDGRPC_CLIENT_TOKEN": mint_token(keys, f"client-{index}", Role.CLIENT),
        }
        name = f"client-{index}"
        args = ["client", "start", "--controller", controller.address, "--name", name]
        # Each node's keys and analysis data stay with the run, never in the home directory.
        args += ["--data-dir", str(data_dir / "nodes" / name)]
        args += ["--entry", "fedgrpc.quickstart.digits"]
        daemons.append(start_daemon(f"client-{index}", args, log_dir=logs, env=env))
    return controller


def _wait_for_clients(control: Any, count: int, daemons: list[Daemon], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while control.GetControllerStatus(pb.GetControllerStatusRequest()).clients_online < count:
        dead = [d.name for d in daemons if not d.alive]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"clients did not connect (exited: {', '.join(dead) or 'none'})")
        time.sleep(0.1)


def _upload_seed(channel: grpc.Channel, control: Any) -> None:
    header = model_pb2.ModelHeader(metadata=dict_to_struct({"name": "digits seed (zeros)"}))
    stream = model_stream(dump_model(digits.initial_model()), header=header)
    response = model_pb2_grpc.ModelServiceStub(channel).Upload(iter(stream))
    control.SetActiveModel(pb.SetActiveModelRequest(model_id=response.model_id))


def _session_request(options: RunOptions) -> pb.StartSessionRequest:
    request = pb.StartSessionRequest(
        rounds=options.rounds,
        aggregator=options.aggregator,
        round_timeout=options.round_timeout,
        min_clients=options.clients,
        requested_clients=options.clients,
        validate=True,
    )
    request.client_settings.update(
        {"epochs": options.local_epochs, "learning_rate": options.learning_rate}
    )
    return request


def _follow_rounds(
    control: Any, session_id: str, options: RunOptions, say: Callable[[str], None]
) -> Iterator[dict[str, Any]]:
    """Yield (and print) each round once it and its validations are done."""
    reported: set[int] = set()
    while True:
        session = control.GetSession(pb.GetSessionRequest(id=session_id))
        request = pb.ListRoundsRequest(session_id=session_id)
        request.page.sort_key, request.page.sort_order = (
            "round_number",
            common_pb2.SORT_ORDER_ASCENDING,
        )
        for record in control.ListRounds(request).result:
            if record.round_number in reported or record.status == "running":
                continue
            later = session.status != "running" or record.round_number < session.rounds_completed
            accuracy = _validation_accuracy(control, record.committed_model_id)
            if record.status == "success" and accuracy is None and not later:
                continue
            reported.add(record.round_number)
            shown = f"{accuracy:13.3f}" if accuracy is not None else f"{record.status:>13}"
            seconds = record.duration_seconds
            say(f"{record.round_number:>5}  {record.num_updates:>7}  {seconds:7.2f}  {shown}")
            yield {"round": record.round_number, "status": record.status, "accuracy": accuracy}
        if session.status != "running" and len(reported) >= session.rounds_completed:
            return
        time.sleep(0.2)


def _validation_accuracy(control: Any, model_id: str) -> float | None:
    if not model_id:
        return None
    found = control.ListValidations(pb.ListValidationsRequest(model_id=model_id))
    scores = [v.metrics["accuracy"] for v in found.result if "accuracy" in v.metrics]
    return sum(scores) / len(scores) if scores else None


def _compare(
    channel: grpc.Channel,
    session: Any,
    rounds: list[dict[str, Any]],
    options: RunOptions,
    say: Callable[[str], None],
) -> RunResult:
    stub = model_pb2_grpc.ModelServiceStub(channel)
    data = b"".join(
        m.data for m in stub.Download(model_pb2.DownloadRequest(model_id=session.model_id))
    )
    _, test = digits.train_test()
    federated = digits.evaluate(load_model_list(data), test)["accuracy"]
    alone = [
        digits.evaluate(
            digits.sgd(
                digits.initial_model(),
                digits.client_split(i, options.clients)[0],
                epochs=options.rounds * options.local_epochs,
                learning_rate=options.learning_rate,
                seed=i,
            ),
            test,
        )["accuracy"]
        for i in range(options.clients)
    ]
    best = max(range(options.clients), key=lambda i: alone[i])
    say(
        f"session {session.status}: federated model test accuracy {federated:.3f}; "
        f"best single client alone (client-{best}) {alone[best]:.3f}"
    )
    return RunResult(
        session_status=session.status,
        rounds=rounds,
        federated_accuracy=federated,
        best_single_accuracy=alone[best],
        best_single_client=best,
    )
