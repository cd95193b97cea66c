"""A PyTorch (CPU) client for the digits task: a small MLP trained on the client's shard.

fedgrpc moves models as named numpy arrays; this module maps them to and from the network's
``state_dict`` in a fixed order, so the global model is a FEDn-style list of arrays.

Run it as a package (see fedgrpc.yaml):
    FEDGRPC_QUICKSTART_CLIENT=0 FEDGRPC_QUICKSTART_CLIENTS=4 \\
        fedgrpc client start --controller 127.0.0.1:12080 --package examples/pytorch
Seed model: ``python examples/pytorch/client.py seed.safetensors`` writes the initial weights.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fedgrpc.model.serialization import dump_model
from fedgrpc.quickstart.digits import client_split

torch.set_num_threads(1)  # many clients share a machine in the quickstart


def make_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def to_arrays(network: nn.Module) -> list[np.ndarray]:
    return [tensor.detach().cpu().numpy().copy() for tensor in network.state_dict().values()]


def from_arrays(arrays: list[np.ndarray]) -> nn.Module:
    network = make_network()
    keys = list(network.state_dict())
    network.load_state_dict(
        {key: torch.from_numpy(np.asarray(a)) for key, a in zip(keys, arrays, strict=True)}
    )
    return network


def _shard() -> tuple[Any, Any]:
    index = int(os.environ["FEDGRPC_QUICKSTART_CLIENT"])
    count = int(os.environ["FEDGRPC_QUICKSTART_CLIENTS"])
    return client_split(index, count)


def train(
    model: list[np.ndarray], settings: Mapping[str, Any]
) -> tuple[list[np.ndarray], dict[str, Any]]:
    local, _ = _shard()
    network = from_arrays(model)
    optimizer = torch.optim.SGD(network.parameters(), lr=float(settings.get("learning_rate", 0.3)))
    x, y = torch.from_numpy(local.x), torch.from_numpy(local.y)
    network.train()
    for _ in range(int(settings.get("epochs", 3))):
        for batch in torch.randperm(len(y)).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(network(x[batch]), y[batch]).backward()
            optimizer.step()
    return to_arrays(network), {"num_examples": len(y)}


def validate(model: list[np.ndarray]) -> dict[str, float]:
    _, held = _shard()
    network = from_arrays(model).eval()
    with torch.no_grad():
        logits = network(torch.from_numpy(held.x))
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(held.y)).item()
    accuracy = float((logits.argmax(dim=1).numpy() == held.y).mean())
    return {"accuracy": accuracy, "loss": loss}


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "seed.safetensors"
    with open(path, "wb") as file:
        file.write(dump_model(to_arrays(make_network())))
    print(f"wrote the initial model to {path}")
