"""Scale: many clients, simulated by a few processes of asyncio clients, on one combiner.

First the target count (1,000 clients), then a bounded search for the largest count that
still completes: the count doubles while runs succeed and time is left, then one bisection
step between the last success and the first failure.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fedgrpc_run import Topology, run_fedgrpc
from bench.results import RunResult
from bench.workload import Workload

CLIENTS_PER_PROCESS = 250
MAX_PROCESSES = 16


@dataclass(frozen=True)
class ScalePlan:
    clients: int = 1000
    params: int = 10_000
    rounds: int = 3
    max_clients: int = 16_000
    budget_seconds: float = 1800.0


def topology_for(clients: int, max_clients: int, seconds_left: float = math.inf) -> Topology:
    """250 clients per process, at most 16 processes; default heartbeats (5 s, 30 s). Clients
    get 0.1 s each to connect (at least 2 min), but never more than the search has left."""
    processes = min(MAX_PROCESSES, max(1, math.ceil(clients / CLIENTS_PER_PROCESS)))
    return Topology(
        processes=processes,
        heartbeat_interval=5.0,
        heartbeat_timeout=30.0,
        connect_timeout=min(max(120.0, clients * 0.1), max(60.0, seconds_left)),
        round_timeout=max(300.0, clients * 0.1),
        max_clients=max(max_clients, clients),
    )


def run_scale(plan: ScalePlan, log_dir: Path) -> tuple[list[RunResult], dict[str, Any]]:
    """Every attempt's result, and a summary of the target run and the largest success."""
    deadline = time.monotonic() + plan.budget_seconds
    attempts = [_attempt(plan, plan.clients, log_dir, deadline)]
    largest_ok = plan.clients if attempts[0].ok else 0
    first_failure = 0 if attempts[0].ok else plan.clients
    count = plan.clients * 2
    while not first_failure and count <= plan.max_clients and _time_left(deadline, attempts):
        attempt = _attempt(plan, count, log_dir, deadline)
        attempts.append(attempt)
        if attempt.ok:
            largest_ok, count = count, count * 2
        else:
            first_failure = count
    middle = (largest_ok + first_failure) // 2
    if largest_ok and middle > largest_ok and _time_left(deadline, attempts):
        attempt = _attempt(plan, middle, log_dir, deadline)
        attempts.append(attempt)
        largest_ok = middle if attempt.ok else largest_ok
    return attempts, _summary(plan, attempts, largest_ok, first_failure)


def _attempt(plan: ScalePlan, clients: int, log_dir: Path, deadline: float) -> RunResult:
    workload = Workload(f"scale-{clients}", clients, plan.params, plan.rounds)
    topology = topology_for(clients, plan.max_clients, deadline - time.monotonic())
    started = time.monotonic()
    result = run_fedgrpc(workload, log_dir / workload.name, topology)
    result.extra["attempt_seconds"] = time.monotonic() - started
    result.extra["client_processes"] = topology.processes
    return result


def _time_left(deadline: float, attempts: list[RunResult]) -> bool:
    """Whether the next attempt (about twice as long as the last) fits in the budget."""
    last = float(attempts[-1].extra.get("attempt_seconds", 0.0))
    return time.monotonic() + 2.5 * last < deadline


def _summary(
    plan: ScalePlan, attempts: list[RunResult], largest_ok: int, first_failure: int
) -> dict[str, Any]:
    target = attempts[0]
    largest = next((a for a in attempts if a.ok and a.clients == largest_ok), None)
    summary: dict[str, Any] = {
        "target_clients": plan.clients,
        "target_ok": target.ok,
        "target_median_round_seconds": target.median_round_seconds,
        "target_combiner_rss_per_client": _per_client(target),
        "largest_ok_clients": largest_ok,
        "first_failed_clients": first_failure,
        "max_clients_searched": plan.max_clients,
        "budget_seconds": plan.budget_seconds,
    }
    if largest is not None:
        summary["largest_median_round_seconds"] = largest.median_round_seconds
        summary["largest_combiner_rss_per_client"] = _per_client(largest)
        if largest is not target and target.ok:
            grown = largest.peak_rss["combiner"] - target.peak_rss["combiner"]
            summary["marginal_combiner_rss_per_client"] = grown / (largest.clients - target.clients)
    return summary


def _per_client(result: RunResult) -> float:
    return result.peak_rss.get("combiner", 0) / result.clients if result.clients else 0.0
