"""A process running many fedgrpc clients on one event loop (``python -m bench.fedgrpc_clients``).

Client ``i`` returns the model plus ``0.001 * (i + 1)`` with ``num_examples = 100``. Prints one
JSON line once every client is connected and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from bench.workload import NUM_EXAMPLES, train_step
from fedgrpc import eventloop
from fedgrpc.allocator import tune_allocator
from fedgrpc.client.node import Client
from fedgrpc.config import ClientConfig
from fedgrpc.security.keystore import mint_token
from fedgrpc.security.tokens import Role

Train = Callable[[Any, Mapping[str, Any]], Awaitable[tuple[Any, Mapping[str, Any]]]]


def make_train(index: int) -> Train:
    # ``async def``: the client runs it on its event loop, as Flower's client runs ``fit`` on
    # its own thread; a plain function would cost a worker-thread hop per task (RESULTS.md).
    async def train(model: Any, settings: Mapping[str, Any]) -> tuple[Any, Mapping[str, Any]]:
        return train_step(model, index), {"num_examples": NUM_EXAMPLES}

    return train


async def run_clients(
    controller: str,
    keys: Path,
    first: int,
    count: int,
    heartbeat: float,
    data_dir: Path | None,
    wave: int = 50,
) -> None:
    """``keys``: the controller's data directory; each client's token is minted from it."""
    clients = [
        Client(
            train=make_train(index),
            config=ClientConfig(
                controller=controller,
                name=f"client-{index}",
                heartbeat_interval=heartbeat,
                token=mint_token(keys, f"client-{index}", Role.CLIENT),
                # Node keys under the run's directory, not the home directory.
                data_dir=data_dir / f"client-{index}" if data_dir else None,
            ),
        )
        for index in range(first, first + count)
    ]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    runs: list[asyncio.Future[None]] = []
    # Clients start in waves: a thousand connecting at once in one process on a busy machine
    # answer their own calls too late, and their retries crowd out the rest (real clients
    # are separate machines and start at their own times).
    for start in range(0, len(clients), wave):
        batch = clients[start : start + wave]
        runs += [asyncio.ensure_future(client.run_async()) for client in batch]
        await asyncio.gather(*(client.connected.wait() for client in batch))
    print(json.dumps({"event": "ready", "clients": count}), flush=True)
    await stopping.wait()
    for client in clients:
        client.stop()
    await asyncio.wait(runs, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--controller", required=True)
    parser.add_argument("--keys", type=Path, required=True, help="The controller's data dir.")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--data-dir", type=Path, help="One directory per client below this.")
    parser.add_argument("--wave", type=int, default=50, help="Clients connecting at once.")
    args = parser.parse_args()
    logging.basicConfig(
        level=os.environ.get("BENCH_CLIENT_LOG_LEVEL", "WARNING"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    tune_allocator()  # as `fedgrpc client start` and Client.run() do
    eventloop.run(  # the loop they run on, too
        run_clients(
            args.controller,
            args.keys,
            args.first,
            args.count,
            args.heartbeat,
            args.data_dir,
            args.wave,
        )
    )


if __name__ == "__main__":
    main()
