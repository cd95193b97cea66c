"""The quickstart task: softmax regression on scikit-learn's handwritten digits, non-IID.

The 1,797 8x8 digit images ship inside scikit-learn (nothing is downloaded). 20% is held out
as a test set; the rest is split across clients with label skew (a Dirichlet draw per class),
so each site sees mostly a few digits, as hospitals see mostly their own populations. Each
client keeps 15% of its shard for local validation.

The client entry points ``train``/``validate`` read their shard from the environment:
``FEDGRPC_QUICKSTART_CLIENT`` (index) and ``FEDGRPC_QUICKSTART_CLIENTS`` (count).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from fedgrpc.errors import FailedPrecondition

FEATURES, CLASSES = 64, 10
Model = list[np.ndarray]


@dataclass(frozen=True, kw_only=True)
class Split:
    x: np.ndarray
    y: np.ndarray


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise FailedPrecondition(
            "the quickstart needs scikit-learn: pip install 'fedgrpc[examples]'"
        ) from None
    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


@cache
def train_test(seed: int = 0) -> tuple[Split, Split]:
    x, y = _digits()
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    return Split(x=x[train], y=y[train]), Split(x=x[test], y=y[test])


def partition(
    labels: np.ndarray, clients: int, *, alpha: float = 0.5, seed: int = 0
) -> list[np.ndarray]:
    """Label-skewed shards: each class is spread over clients by a Dirichlet(alpha) draw."""
    rng = np.random.default_rng(seed)
    shards: list[list[int]] = [[] for _ in range(clients)]
    for label in range(CLASSES):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(rng.dirichlet([alpha] * clients)) * len(members)).astype(int)[:-1]
        for shard, part in zip(shards, np.split(members, cuts), strict=True):
            shard.extend(part.tolist())
    return [np.array(sorted(shard), dtype=np.int64) for shard in shards]


@cache
def client_split(index: int, clients: int, seed: int = 0) -> tuple[Split, Split]:
    """Client ``index``'s local training and validation data."""
    train, _ = train_test(seed)
    shard = partition(train.y, clients, seed=seed)[index]
    order = np.random.default_rng(seed + 1 + index).permutation(shard)
    cut = max(1, int(0.85 * len(order)))
    local, held = order[:cut], order[cut:]
    if len(held) == 0:
        held = local
    return Split(x=train.x[local], y=train.y[local]), Split(x=train.x[held], y=train.y[held])


def initial_model() -> Model:
    return [np.zeros((FEATURES, CLASSES), dtype=np.float32), np.zeros(CLASSES, dtype=np.float32)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return probabilities


def sgd(model: Model, data: Split, *, epochs: int, learning_rate: float, seed: int) -> Model:
    """Mini-batch SGD on the cross-entropy of a softmax regression."""
    weights, bias = (np.array(array, dtype=np.float32) for array in model)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(len(data.y)), max(1, len(data.y) // 32)):
            probs = _softmax(data.x[batch] @ weights + bias)
            probs[np.arange(len(batch)), data.y[batch]] -= 1.0
            weights -= learning_rate * (data.x[batch].T @ probs) / len(batch)
            bias -= learning_rate * probs.mean(axis=0)
    return [weights, bias]


def evaluate(model: Model, data: Split) -> dict[str, float]:
    probs = _softmax(data.x @ model[0] + model[1])
    loss = -np.log(probs[np.arange(len(data.y)), data.y] + 1e-12).mean()
    return {"accuracy": float((probs.argmax(axis=1) == data.y).mean()), "loss": float(loss)}


def _my_shard() -> tuple[int, int]:
    try:
        return int(os.environ["FEDGRPC_QUICKSTART_CLIENT"]), int(
            os.environ["FEDGRPC_QUICKSTART_CLIENTS"]
        )
    except (KeyError, ValueError):
        raise FailedPrecondition(
            "set FEDGRPC_QUICKSTART_CLIENT (index) and FEDGRPC_QUICKSTART_CLIENTS (count)"
        ) from None


def train(model: Model, settings: Mapping[str, Any]) -> tuple[Model, dict[str, Any]]:
    """Client entry point: a few local epochs from the global model."""
    index, clients = _my_shard()
    local, _ = client_split(index, clients)
    updated = sgd(
        model,
        local,
        epochs=int(settings.get("epochs", 3)),
        learning_rate=float(settings.get("learning_rate", 0.5)),
        seed=int(settings.get("seed", 0)) + index,
    )
    return updated, {"num_examples": len(local.y)}


def validate(model: Model) -> dict[str, float]:
    """Client entry point: accuracy and loss on the client's held-out validation data."""
    index, clients = _my_shard()
    _, held = client_split(index, clients)
    return evaluate(model, held)
