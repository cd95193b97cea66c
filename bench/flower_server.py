"""A Flower server process: ``flwr.server.start_server`` with a timed FedAvg.

Run with the Python that has Flower (``python -m bench.flower_server --help``). It times each
round from the moment all clients are connected and the fit instructions are made (FedAvg's
``configure_fit``) to the aggregate being returned (``aggregate_fit``), checks the final model
and writes one JSON document to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import flwr  # type: ignore[import-not-found, unused-ignore]
from flwr.common import (  # type: ignore[import-not-found, unused-ignore]
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.strategy import FedAvg  # type: ignore[import-not-found, unused-ignore]

from bench.procs import peak_rss_bytes
from bench.workload import FLOWER_MAX_MESSAGE, Workload, initial_model, max_error


class TimedFedAvg(FedAvg):  # type: ignore[misc, unused-ignore]
    """FedAvg that records when each round starts and ends, and checks the final model."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.connected_at = 0.0
        self.started: dict[int, float] = {}
        self.ended: dict[int, float] = {}
        self.error = float("inf")
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=workload.clients,
            min_available_clients=workload.clients,
            initial_parameters=ndarrays_to_parameters(initial_model(workload.params)),
        )

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        client_manager.wait_for(self.workload.clients, timeout=3600)
        now = time.monotonic()
        self.connected_at = self.connected_at or now
        self.started[server_round] = now
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        aggregated = super().aggregate_fit(server_round, results, failures)
        self.ended[server_round] = time.monotonic()
        if failures:
            self.error = float("inf")
        elif server_round == self.workload.rounds and aggregated[0] is not None:
            self.error = max_error(parameters_to_ndarrays(aggregated[0]), self.workload)
        return aggregated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--params", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    workload = Workload("flower", args.clients, args.params, args.rounds)
    strategy = TimedFedAvg(workload)
    flwr.server.start_server(
        server_address=args.address,
        config=flwr.server.ServerConfig(num_rounds=args.rounds),
        strategy=strategy,
        grpc_max_message_length=FLOWER_MAX_MESSAGE,
    )
    rounds = sorted(strategy.ended)
    report = {
        "connected_at": strategy.connected_at,
        "round_seconds": [strategy.ended[r] - strategy.started[r] for r in rounds],
        "rounds_wall_seconds": strategy.ended[rounds[-1]] - strategy.started[1] if rounds else 0,
        "rounds_completed": len(rounds),
        "max_error": strategy.error,
        "flwr_version": flwr.__version__,
        "peak_rss": peak_rss_bytes(),
    }
    args.out.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
