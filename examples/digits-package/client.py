"""Entry points of the digits package: thin wrappers over ``fedgrpc.quickstart.digits``.

Each client reads its shard of scikit-learn's digits from ``FEDGRPC_QUICKSTART_CLIENT`` (its
index) and ``FEDGRPC_QUICKSTART_CLIENTS`` (how many clients share the data).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fedgrpc.quickstart import digits

# Logged, not printed: a daemon's stdout carries its JSON ready line.
log = logging.getLogger(__name__)


def startup() -> None:
    """Runs once as the client starts: loads this site's shard now, so a missing scikit-learn
    or shard setting stops the client with a clear message before it joins."""
    metrics = digits.validate(digits.initial_model())
    log.info("digits package ready; local validation of an untrained model: %s", metrics)


def train(model: digits.Model, settings: Mapping[str, Any]) -> tuple[digits.Model, dict[str, Any]]:
    """A few local epochs from the global model; weighted by the number of local examples."""
    return digits.train(model, settings)


def validate(model: digits.Model) -> dict[str, float]:
    """Accuracy and loss on this client's held-out data."""
    return digits.validate(model)
