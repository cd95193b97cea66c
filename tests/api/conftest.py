"""A real network for the synchronous APIClient: controller, two combiners and four clients
on an asyncio loop in a background thread, while the tests call the client from their own.

The network is built once per test session; tests that need a clean slate look at their own
session's records (filters, or counts before and after) rather than at global totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import safetensors.numpy

from fedgrpc.api import APIClient
from fedgrpc.config import ControllerConfig
from fedgrpc.controller.app import Controller
from tests.integration.conftest import FAST, LocalNetwork, shift_train

T = TypeVar("T")

# The seed model: a list model, as FEDn's numpyhelper writes it.
SEED: list[np.ndarray] = [
    np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
    np.arange(4, dtype=np.float64),
]
# (name, combiner, accuracy its validate reports) of the clients that train well.
GOOD_CLIENTS = (("site-a", "combiner-a", 0.75), ("site-b", "combiner-b", 0.25))
CLIENT_NAMES = ("site-a", "site-b", "crashy", "misshapen")
ROUNDS = 2


def eventually(probe: Callable[[], T], *, timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return value


class BackgroundLoop:
    """An event loop running forever in a daemon thread; coroutines are handed to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="network-loop")

    def start(self) -> None:
        self._thread.start()

    def run(self, coroutine: Awaitable[T], timeout: float = 60.0) -> T:
        """Run ``coroutine`` on the loop and wait (bounded) for its result."""

        async def wrapped() -> T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def stop(self) -> None:
        self.run(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


class Gate:
    """Holds a client's train at will, to keep a round (and so its session) running."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def wait(self) -> None:
        # Bounded, so a failing test cannot leave a worker thread blocked forever.
        self._open.wait(timeout=30)


def gated(gate: Gate, train: Callable[..., Any]) -> Callable[..., Any]:
    def train_when_open(model: Any, settings: Mapping[str, Any]) -> Any:
        gate.wait()
        return train(model, settings)

    return train_when_open


def reports(accuracy: float) -> Callable[[Any], dict[str, float]]:
    def validate(model: Any) -> dict[str, float]:
        return {"accuracy": accuracy}

    return validate


def crash(model: Any, settings: Mapping[str, Any]) -> Any:
    raise RuntimeError("this client always fails to train")


def misshape(model: list[np.ndarray], settings: Mapping[str, Any]) -> Any:
    """An update whose arrays do not match the global model: its combiner rejects it."""
    return [np.zeros(7, dtype=np.float32)], {"num_examples": 10}


@dataclass
class Network:
    """The running network as the tests see it."""

    address: str
    loop: BackgroundLoop
    local: LocalNetwork
    gate: Gate


async def _build_network(data_dir: Path, gate: Gate) -> LocalNetwork:
    config = ControllerConfig(port=0, data_dir=data_dir / "controller", **FAST)
    controller = Controller(config)
    await controller.start()
    network = LocalNetwork(data_dir=data_dir, controller=controller)
    try:
        await network.add_combiner("combiner-a")
        await network.add_combiner("combiner-b")
        (a, a_combiner, a_accuracy), (b, b_combiner, b_accuracy) = GOOD_CLIENTS
        train_a = gated(gate, shift_train(0.1, 100))
        await network.add_client(a, train_a, reports(a_accuracy), preferred_combiner=a_combiner)
        await network.add_client(
            b, shift_train(0.3, 300), reports(b_accuracy), preferred_combiner=b_combiner
        )
        await network.add_client("crashy", crash, None, preferred_combiner="combiner-a")
        await network.add_client(
            "misshapen", misshape, reports(0.5), preferred_combiner="combiner-b"
        )
    except BaseException:
        await network.close()
        raise
    return network


@pytest.fixture(scope="session")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    loop = BackgroundLoop()
    loop.start()
    gate = Gate()
    try:
        local = loop.run(_build_network(tmp_path_factory.mktemp("network"), gate))
        try:
            yield Network(local.controller.address, loop, local, gate)
        finally:
            gate.open()
            loop.run(local.close())
    finally:
        loop.stop()


@pytest.fixture(scope="session")
def api(network: Network) -> Iterator[APIClient]:
    with APIClient(network.address, token=network.local.admin_token) as client:
        yield client


def write_safetensors(path: Path, arrays: list[np.ndarray]) -> Path:
    safetensors.numpy.save_file({str(i): a for i, a in enumerate(arrays)}, str(path))
    return path


@dataclass(frozen=True)
class Trained:
    """A finished two-round session, for the tests that read what it left behind."""

    session_id: str
    seed_model_id: str
    started: dict[str, Any]  # what start_session answered
    session: dict[str, Any]  # what wait_for_session answered
    printed: str


@pytest.fixture(scope="session")
def trained(api: APIClient, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    seed_path = write_safetensors(tmp_path_factory.mktemp("seed") / "seed.safetensors", SEED)
    seed = api.set_active_model(str(seed_path))
    started = api.start_session(
        rounds=ROUNDS, round_timeout=20, min_clients=2, requested_clients=4, seed=7
    )
    printed = io.StringIO()  # not a terminal: the progress bar must stay silent
    with contextlib.redirect_stdout(printed):
        session = api.wait_for_session(started["session_id"], timeout=60, progress=True)
    return Trained(started["session_id"], seed["model_id"], started, session, printed.getvalue())
