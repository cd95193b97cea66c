"""A Flower client process: ``flwr.client.start_client`` with a NumPyClient.

Run with the Python that has Flower (``python -m bench.flower_client --help``). It returns the
received arrays plus ``0.001 * (index + 1)`` with ``num_examples = 100`` and exits when the
server ends the run.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import flwr  # type: ignore[import-not-found, unused-ignore]

from bench.procs import peak_rss_bytes
from bench.workload import FLOWER_MAX_MESSAGE, NUM_EXAMPLES, train_step


class StepClient(flwr.client.NumPyClient):  # type: ignore[misc, unused-ignore]
    def __init__(self, index: int) -> None:
        self.index = index

    def get_parameters(self, config: dict[str, Any]) -> list[Any]:
        raise RuntimeError("the server holds the initial parameters")

    def fit(
        self, parameters: list[Any], config: dict[str, Any]
    ) -> tuple[list[Any], int, dict[str, Any]]:
        return train_step(parameters, self.index), NUM_EXAMPLES, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args()
    flwr.client.start_client(
        server_address=args.address,
        client=StepClient(args.index).to_client(),
        grpc_max_message_length=FLOWER_MAX_MESSAGE,
    )
    print(json.dumps({"event": "done", "peak_rss": peak_rss_bytes()}), flush=True)


if __name__ == "__main__":
    main()
