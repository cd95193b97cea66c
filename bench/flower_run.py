"""Run one workload on Flower: ``start_server`` and ``start_client`` processes on loopback.

Flower runs from its own interpreter (see :func:`find_flower_python`): it needs
``protobuf<7``, fedgrpc ``protobuf>=7``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import (
    Child,
    PeakMonitor,
    check_alive,
    free_port,
    last_json_line,
    spawn,
    stop_all,
    wait_for_port,
)
from bench.results import RunResult
from bench.workload import Workload, is_correct

FLOWER_PYTHON_ENV = "BENCH_FLOWER_PYTHON"
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0"}
RUN_TIMEOUT = 3600.0


def find_flower_python(explicit: str | None = None) -> str | None:
    """The interpreter that can import ``flwr``: ``explicit``, ``$BENCH_FLOWER_PYTHON``, or
    this one when it has Flower; None when none is given and this one lacks Flower."""
    candidate = explicit or os.environ.get(FLOWER_PYTHON_ENV)
    if candidate:
        return shutil.which(candidate) or candidate
    return sys.executable if importlib.util.find_spec("flwr") is not None else None


def flower_version(python: str) -> str:
    probe = subprocess.run(
        [python, "-c", "import flwr; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        env={**os.environ, **FLOWER_ENV},
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else ""


def run_flower(workload: Workload, log_dir: Path, python: str) -> RunResult:
    result = RunResult("flower", workload.name, workload.clients, workload.params, workload.rounds)
    monitor = PeakMonitor()
    children: list[Child] = []
    report_path = log_dir / "flower-server.json"
    report_path.unlink(missing_ok=True)
    try:
        started = time.monotonic()
        _start(workload, log_dir, python, children, monitor, report_path)
        _wait_for_server(children, RUN_TIMEOUT)
        _read_report(result, report_path, started)
    except Exception as exc:  # a failed run is a result, not a crash of the suite
        result.failure = f"{type(exc).__name__}: {exc}"
    finally:
        monitor.sample()
        stop_all(children)
        result.peak_rss = _roles(monitor.close(), children, result)
        clients = sum(v for k, v in monitor.cpu.items() if k.startswith("flower-client-"))
        result.extra["cpu_seconds"] = {
            "server": round(monitor.cpu.get("server", 0.0), 2),
            "clients": round(clients, 2),
        }
    result.ok = not result.failure and is_correct(result.max_error)
    if not result.ok and not result.failure:
        result.failure = f"wrong result: max error {result.max_error:.3g}"
    return result


def _start(
    workload: Workload,
    log_dir: Path,
    python: str,
    children: list[Child],
    monitor: PeakMonitor,
    report_path: Path,
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = ["--address", address, "--clients", str(workload.clients)]
    args += ["--params", str(workload.params), "--rounds", str(workload.rounds)]
    server = spawn(
        "flower-server",
        python,
        "bench.flower_server",
        [*args, "--out", str(report_path)],
        log_dir=log_dir,
        env=FLOWER_ENV,
    )
    children.append(server)
    monitor.watch("server", server.process.pid)
    wait_for_port(port, 120, children)
    for index in range(workload.clients):
        name = f"flower-client-{index}"
        client_args = ["--address", address, "--index", str(index)]
        child = spawn(
            name, python, "bench.flower_client", client_args, log_dir=log_dir, env=FLOWER_ENV
        )
        children.append(child)
        monitor.watch(name, child.process.pid)


def _wait_for_server(children: list[Child], timeout: float) -> None:
    server, clients = children[0], children[1:]
    deadline = time.monotonic() + timeout
    while server.alive():
        failed = [c for c in clients if not c.alive() and c.process.returncode != 0]
        check_alive(failed)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Flower server did not finish within {timeout:g}s")
        time.sleep(0.05)
    if server.process.returncode != 0:
        check_alive([server])


def _read_report(result: RunResult, report_path: Path, started: float) -> None:
    report = json.loads(report_path.read_text())
    result.round_seconds = list(report["round_seconds"])
    result.rounds_wall_seconds = float(report["rounds_wall_seconds"])
    result.startup_seconds = float(report["connected_at"]) - started
    result.max_error = float(report["max_error"])
    result.extra["flwr_version"] = report["flwr_version"]
    result.extra["server_reported_peak_rss"] = int(report["peak_rss"])
    if report["rounds_completed"] != result.rounds:
        result.failure = f"only {report['rounds_completed']} of {result.rounds} rounds completed"


def _roles(peaks: dict[str, int], children: list[Child], result: RunResult) -> dict[str, int]:
    """Polled peaks, raised to what the processes reported themselves as they exited."""
    reported = [int(last_json_line(c.log_path).get("peak_rss", 0)) for c in children[1:]]
    clients = [v for k, v in peaks.items() if k.startswith("flower-client-")]
    server_reported = int(result.extra.get("server_reported_peak_rss", 0))
    return {
        "server": max(peaks.get("server", 0), server_reported),
        "client": max([*clients, *reported], default=0),
    }
