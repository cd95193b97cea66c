"""Run one workload on fedgrpc: a controller, one combiner and client processes on loopback."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from bench.procs import Child, PeakMonitor, check_alive, spawn, stop_all, this_python
from bench.results import RunResult
from bench.workload import Workload, initial_model, is_correct, max_error
from fedgrpc.launch import Daemon, start_daemon
from fedgrpc.model.serialization import dump_model, load_model_list
from fedgrpc.proto.common.v1 import common_pb2
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.proto.control.v1 import control_pb2_grpc
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc
from fedgrpc.rpc.server import message_size_options
from fedgrpc.security.bearer import bearer_channel
from fedgrpc.security.keystore import mint_token, read_admin_token
from fedgrpc.security.tokens import Role
from fedgrpc.transfer import model_stream

ROUND_TIMEOUT = 1800.0
# How often the harness asks whether the session ended. Every figure comes from the round
# records, so this adds only harness time after the last round; polling at 20 Hz, as before,
# cost the measured controller a token check and a store read 20 times a second (session 3
# profile: 7% of its samples) on the same 2 cores as the round.
_FOLLOW_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Topology:
    """How the clients are laid out, and how chatty the links are."""

    processes: int | None = None  # None: one process per client
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 10.0
    connect_timeout: float = 300.0
    round_timeout: float = ROUND_TIMEOUT
    max_clients: int | None = None  # the combiner's limit; None keeps its default


def run_fedgrpc(workload: Workload, log_dir: Path, topology: Topology | None = None) -> RunResult:
    topology = topology or Topology()
    result = RunResult("fedgrpc", workload.name, workload.clients, workload.params, workload.rounds)
    monitor = PeakMonitor()
    try:
        with _network(workload, log_dir, topology, monitor) as running:
            _measure(workload, running, result, topology)
    except Exception as exc:  # a failed run is a result, not a crash of the suite
        result.failure = f"{type(exc).__name__}: {exc}"
    finally:
        result.peak_rss = _roles(monitor.close())
        result.extra["cpu_seconds"] = _cpu_roles(monitor.cpu)
    result.ok = not result.failure and is_correct(result.max_error)
    if not result.ok and not result.failure:
        result.failure = f"wrong result: max error {result.max_error:.3g}"
    return result


@dataclass(frozen=True)
class _Running:
    controller: Daemon
    keys: Path  # the controller's data directory, whose key signs the tokens
    clients: list[Child]
    started: float  # monotonic time before the first process was spawned


@contextmanager
def _network(
    workload: Workload, log_dir: Path, topology: Topology, monitor: PeakMonitor
) -> Iterator[_Running]:
    with ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedgrpc-bench-")))
        daemons: list[Daemon] = []
        children: list[Child] = []
        stack.callback(_stop_daemons, daemons)
        stack.callback(_stop_clients, children, monitor)
        started = time.monotonic()
        _start_daemons(daemons, data_dir, log_dir, topology, monitor)
        controller = daemons[0]
        for name, first, count in _client_groups(workload.clients, topology.processes):
            args = ["--controller", controller.address, "--keys", str(data_dir)]
            args += ["--first", str(first)]
            args += ["--count", str(count), "--heartbeat", str(topology.heartbeat_interval)]
            args += ["--data-dir", str(data_dir / "nodes")]
            child = spawn(name, this_python(), "bench.fedgrpc_clients", args, log_dir=log_dir)
            children.append(child)
            monitor.watch(name, child.process.pid)
        yield _Running(controller, data_dir, children, started)


def _start_daemons(
    daemons: list[Daemon], data_dir: Path, log_dir: Path, topology: Topology, monitor: PeakMonitor
) -> None:
    """A controller, then one combiner linked to it (appended as they come up)."""
    env = _link_env(topology)
    controller = start_daemon(
        "controller",
        ["controller", "start", "--port", "0", "--data-dir", str(data_dir)],
        log_dir=log_dir,
        env={f"FEDGRPC_CONTROLLER_{k}": v for k, v in env.items()},
    )
    daemons.append(controller)
    monitor.watch("controller", controller.process.pid)
    combiner_env = {f"FEDGRPC_COMBINER_{k}": v for k, v in env.items()}
    if topology.max_clients is not None:
        combiner_env["FEDGRPC_COMBINER_MAX_CLIENTS"] = str(topology.max_clients)
    combiner_env["FEDGRPC_COMBINER_TOKEN"] = mint_token(data_dir, "combiner-0", Role.COMBINER)
    args = ["combiner", "start", "--controller", controller.address, "--name", "combiner-0"]
    daemons.append(start_daemon("combiner", args, log_dir=log_dir, env=combiner_env))
    monitor.watch("combiner", daemons[-1].process.pid)


def _stop_daemons(daemons: list[Daemon]) -> None:
    for daemon in reversed(daemons):
        daemon.stop()


def _stop_clients(children: list[Child], monitor: PeakMonitor) -> None:
    monitor.sample()  # the last look at every peak, before anything stops
    stop_all(children)


def _link_env(topology: Topology) -> dict[str, str]:
    return {
        "HEARTBEAT_INTERVAL": str(topology.heartbeat_interval),
        "HEARTBEAT_TIMEOUT": str(topology.heartbeat_timeout),
        "LOG_LEVEL": os.environ.get("BENCH_DAEMON_LOG_LEVEL", "WARNING"),
    }


def _client_groups(clients: int, processes: int | None) -> Iterator[tuple[str, int, int]]:
    count = clients if processes is None else max(1, min(processes, clients))
    base, extra = divmod(clients, count)
    first = 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        yield f"clients-{index}", first, size
        first += size


def _measure(workload: Workload, running: _Running, result: RunResult, topology: Topology) -> None:
    options = message_size_options(64 << 20)
    clients = running.clients
    with grpc.insecure_channel(running.controller.address, options=options) as plain:
        channel = bearer_channel(plain, read_admin_token(running.keys))
        control = control_pb2_grpc.ControlServiceStub(channel)
        _wait_for_clients(control, workload.clients, clients, topology.connect_timeout)
        result.startup_seconds = time.monotonic() - running.started
        seed_started = time.monotonic()
        _upload_seed(channel, control, workload)
        result.extra["seed_upload_seconds"] = time.monotonic() - seed_started
        _run_session(channel, control, workload, clients, result, topology.round_timeout)


def _run_session(
    channel: grpc.Channel,
    control: Any,
    workload: Workload,
    clients: list[Child],
    result: RunResult,
    round_timeout: float,
) -> None:
    """Start a session, follow it to its end, record its rounds and check its model."""
    session = control.StartSession(_session_request(workload, round_timeout))
    final = _follow(control, session.id, clients, workload, round_timeout)
    result.extra["session_status"] = final.status
    records = _rounds(control, session.id)
    _record_rounds(result, records)
    failed = [r for r in records if r.status != "success"]
    if final.status != "finished" or len(records) != workload.rounds or failed:
        reason = final.reason or (failed[0].reason if failed else "rounds missing")
        result.failure = f"session {final.status}, {len(failed)} round(s) failed: {reason}"
        return
    result.max_error = max_error(_download(channel, final.model_id), workload)


def _wait_for_clients(control: Any, count: int, children: list[Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    request = pb.GetControllerStatusRequest()
    while control.GetControllerStatus(request).clients_online < count:
        check_alive(children)
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} clients connected within {timeout:g}s")
        time.sleep(0.05)


def _upload_seed(channel: grpc.Channel, control: Any, workload: Workload) -> None:
    data = dump_model(initial_model(workload.params))
    header = model_pb2.ModelHeader()
    response = model_pb2_grpc.ModelServiceStub(channel).Upload(
        iter(model_stream(data, header=header))
    )
    control.SetActiveModel(pb.SetActiveModelRequest(model_id=response.model_id))


def _session_request(workload: Workload, round_timeout: float) -> pb.StartSessionRequest:
    return pb.StartSessionRequest(
        name=f"bench {workload.name}",
        rounds=workload.rounds,
        aggregator="fedavg",
        round_timeout=round_timeout,
        min_clients=workload.clients,
        requested_clients=workload.clients,
        validate=False,
    )


def _follow(
    control: Any, session_id: str, children: list[Child], workload: Workload, round_timeout: float
) -> Any:
    deadline = time.monotonic() + workload.rounds * (round_timeout + 60)
    while True:
        session = control.GetSession(pb.GetSessionRequest(id=session_id))
        if session.status != "running":
            return session
        check_alive(children)
        if time.monotonic() > deadline:
            raise TimeoutError("the session did not finish in time")
        time.sleep(_FOLLOW_POLL_SECONDS)


def _rounds(control: Any, session_id: str) -> list[Any]:
    request = pb.ListRoundsRequest(session_id=session_id)
    request.page.limit = 10_000
    request.page.sort_key = "round_number"
    request.page.sort_order = common_pb2.SORT_ORDER_ASCENDING
    return list(control.ListRounds(request).result)


def _record_rounds(result: RunResult, records: list[Any]) -> None:
    result.round_seconds = [r.duration_seconds for r in records if r.status == "success"]
    result.extra["round_status"] = [r.status for r in records]
    result.extra["round_updates"] = [r.num_updates for r in records]
    reasons = [r.reason for r in records if r.reason]
    if reasons:
        result.extra["round_reasons"] = reasons
    # Where a round's time goes: the slowest client's task (dispatch to update folded in,
    # as the combiner saw it); the rest is fetching the model, closing, reducing, committing.
    result.extra["slowest_client_seconds"] = [
        max((c.round_trip_seconds for rc in r.combiners for c in rc.clients), default=0.0)
        for r in records
    ]
    if records:
        first = datetime.fromisoformat(records[0].created_at)
        last = datetime.fromisoformat(records[-1].updated_at)
        result.rounds_wall_seconds = (last - first).total_seconds()


def _download(channel: grpc.Channel, model_id: str) -> list[Any]:
    stub = model_pb2_grpc.ModelServiceStub(channel)
    chunks = stub.Download(model_pb2.DownloadRequest(model_id=model_id))
    return load_model_list(b"".join(chunk.data for chunk in chunks))


def _roles(peaks: dict[str, int]) -> dict[str, int]:
    clients = [v for k, v in peaks.items() if k.startswith("clients-")]
    return {
        "controller": peaks.get("controller", 0),
        "combiner": peaks.get("combiner", 0),
        "client": max(clients, default=0),
    }


def _cpu_roles(cpu: dict[str, float]) -> dict[str, float]:
    """CPU seconds each role used over the whole run (start-up included)."""
    return {
        "controller": round(cpu.get("controller", 0.0), 2),
        "combiner": round(cpu.get("combiner", 0.0), 2),
        "clients": round(sum(v for k, v in cpu.items() if k.startswith("clients-")), 2),
    }
