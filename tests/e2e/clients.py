"""Deterministic train/validate code for the e2e tests, loaded by client daemons.

Started as ``fedgrpc client start --entry tests.e2e.clients``. Each client process learns who
it is from the environment the test gives it:

- ``FEDGRPC_TEST_CLIENT_INDEX``: i; the client adds ``delta(i)`` to every array and reports
  ``num_examples(i)`` examples, so every client's update (and weight) is different and the
  test can compute the exact FedAvg of any set of clients.
- ``FEDGRPC_TEST_BEHAVIOUR``: ``""`` (train at once), ``"hang"`` (block in train for a long
  time, to be killed), ``"raise-first"`` (the first train call raises ValueError).
- ``FEDGRPC_TEST_TRAIN_SECONDS``: how long each train call takes (default 0).
- ``FEDGRPC_TEST_MARKER_DIR``: where train drops ``<name>.train-<call>`` marker files when it
  starts, so a test can see a client is inside train before it acts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

INDEX_ENV = "FEDGRPC_TEST_CLIENT_INDEX"
BEHAVIOUR_ENV = "FEDGRPC_TEST_BEHAVIOUR"
TRAIN_SECONDS_ENV = "FEDGRPC_TEST_TRAIN_SECONDS"
MARKER_DIR_ENV = "FEDGRPC_TEST_MARKER_DIR"

HANG_SECONDS = 30.0

_train_calls = 0


def delta(index: int) -> float:
    """What client ``index`` adds to every weight."""
    return 0.001 * (index + 1)


def num_examples(index: int) -> int:
    """The weight of client ``index``'s update."""
    return 100 * (index + 1)


def client_name(index: int) -> str:
    return f"c{index}"


def client_index(name: str) -> int:
    return int(name.removeprefix("c"))


def _index() -> int:
    return int(os.environ[INDEX_ENV])


def _mark(call: int) -> None:
    marker_dir = os.environ.get(MARKER_DIR_ENV)
    if marker_dir:
        Path(marker_dir, f"{client_name(_index())}.train-{call}").touch()


def train(model: list[np.ndarray], settings: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    global _train_calls
    _train_calls += 1
    call = _train_calls
    index = _index()
    _mark(call)
    behaviour = os.environ.get(BEHAVIOUR_ENV, "")
    if behaviour == "hang":
        time.sleep(HANG_SECONDS)
    if behaviour == "raise-first" and call == 1:
        raise ValueError(f"client {client_name(index)} fails its first train on purpose")
    time.sleep(float(os.environ.get(TRAIN_SECONDS_ENV, "0")))
    updated = [np.asarray(array) + delta(index) for array in model]
    return updated, {"num_examples": num_examples(index), "client_index": index}


def validate(model: list[np.ndarray]) -> dict[str, Any]:
    return {
        "client_index": _index(),
        "weight_sum": float(sum(float(np.sum(array)) for array in model)),
    }
