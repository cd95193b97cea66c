"""Federated analyses (FLAME) end to end: controller, combiner and four nodes as processes.

Three default nodes hold CSV files; the aggregator combines their sealed statistics into a
federated mean and histogram (examples/flame-mean), submits it, and the API client downloads
it and compares it with the computation on the pooled data. A second test kills a node in the
middle of an analysis: it must end as failed within a bounded time.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedgrpc.api import APIClient
from fedgrpc.launch import Daemon
from fedgrpc.modelstore import create_model_store
from fedgrpc.security.tokens import Role
from fedgrpc.statestore import open_statestore
from tests.e2e import clients as test_clients
from tests.e2e.harness import REPO_ROOT, Cluster, ControlClient, wait_until

pytestmark = pytest.mark.e2e

EXAMPLE = REPO_ROOT / "examples" / "flame-mean"
COLUMNS = ["age", "bmi"]
EDGES = [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
GRACE_SECONDS = 3.0
DEFAULT_NODES = ["node-1", "node-2", "node-3"]


@pytest.fixture
def api(cluster: Cluster) -> Iterator[tuple[APIClient, Daemon]]:
    cluster.env.update(
        FEDGRPC_CONTROLLER_ANALYSIS_NODE_GRACE_SECONDS=str(GRACE_SECONDS),
        FEDGRPC_CONTROLLER_MESSAGE_RETRY_SECONDS="0.5",
    )
    controller = cluster.start_controller()
    cluster.start_combiners(controller.address, ["combiner-a", "combiner-b"])
    client = APIClient(controller.address, token=cluster.admin_token)
    try:
        yield client, controller
    finally:
        client.close()


def write_site(directory: Path, seed: int) -> dict[str, list[float]]:
    """Two CSV files of random ages and BMIs (one split across files); the values written."""
    rng = np.random.default_rng(seed)
    size = 40 + 10 * seed
    columns = {"age": rng.uniform(18, 95, size).round(1), "bmi": rng.normal(27, 6, size).round(2)}
    directory.mkdir(parents=True)
    half = size // 2
    for name, part in (("a.csv", slice(0, half)), ("b.csv", slice(half, size))):
        lines = [
            "age,bmi",
            *(f"{a},{b}" for a, b in zip(columns["age"][part], columns["bmi"][part], strict=True)),
        ]
        (directory / name).write_text("\n".join(lines) + "\n")
    return {key: [float(v) for v in values] for key, values in columns.items()}


def start_nodes(cluster: Cluster, controller: str, data: Path) -> dict[str, Daemon]:
    nodes: dict[str, Daemon] = {}
    for index, name in enumerate([*DEFAULT_NODES, "agg"]):
        sources = (
            [] if name == "agg" else [{"id": "cohort", "type": "csv", "path": str(data / name)}]
        )
        env = {
            test_clients.INDEX_ENV: str(index),
            "FEDGRPC_CLIENT_DATA_SOURCES": json.dumps(sources),
            "FEDGRPC_CLIENT_ANALYSIS_PYTHON_PATH": f"{EXAMPLE},{REPO_ROOT}",
            "FEDGRPC_CLIENT_DATA_DIR": str(cluster.root / "nodes" / name),
            "FEDGRPC_CLIENT_TOKEN": cluster.token(Role.CLIENT, name),
        }
        args = ["client", "start", "--controller", controller, "--name", name]
        # The aggregator is an analysis-only node (no training code); the others could train.
        code = [] if name == "agg" else ["--entry", "tests.e2e.clients"]
        nodes[name] = cluster.spawn(name, [*args, *code], env)
    for daemon in nodes.values():
        daemon.wait_ready()
    control = ControlClient(controller, cluster.admin_token)
    try:
        control.wait_clients_online(len(nodes))
    finally:
        control.close()
    return nodes


def pooled(sites: list[dict[str, list[float]]]) -> dict[str, Any]:
    result = {}
    for column in COLUMNS:
        values = np.concatenate([site[column] for site in sites])
        counts, _ = np.histogram(values, bins=EDGES)
        result[column] = {"n": len(values), "mean": float(values.mean()), "counts": counts.tolist()}
    return result


def test_federated_mean_and_histogram_with_sealed_intermediate_data(
    cluster: Cluster, api: tuple[APIClient, Daemon], tmp_path: Path
) -> None:
    client, controller = api
    sites = [
        write_site(tmp_path / "data" / name, seed) for seed, name in enumerate(DEFAULT_NODES, 1)
    ]
    start_nodes(cluster, controller.address, tmp_path / "data")

    started = client.start_analysis(
        "analysis:main",
        [*DEFAULT_NODES, "agg"],
        "agg",
        project_id="stats",
        settings={"columns": COLUMNS, "edges": EDGES},
        timeout=180,
    )
    analysis_id = started["analysis_id"]
    final = client.wait_for_analysis(analysis_id, timeout=180)
    assert final["status"] == "executed", (final, cluster.report(60))
    assert [node["progress"] for node in final["nodes"]] == [100, 100, 100, 100]

    result = json.loads(client.download_analysis_result(analysis_id, tmp_path / "result.json"))
    expected = pooled(sites)
    for column in COLUMNS:
        got = result["columns"][column]
        assert got["n"] == expected[column]["n"]
        assert got["mean"] == pytest.approx(expected[column]["mean"], rel=1e-12)
        assert got["counts"] == expected[column]["counts"]
    assert client.get_analysis_result_info(analysis_id)["content_type"].startswith("text/plain")
    assert any("read" in line["message"] for line in client.get_analysis_logs(analysis_id))

    # The controller only ever held ciphertext: every intermediate object is sealed for the
    # aggregator, and none of its bytes contain the statistics' JSON.
    data_dir = cluster.root / "controller-data"
    with open_statestore(data_dir=data_dir) as store:
        objects = store.objects.list(analysis_id=analysis_id, kind="intermediate")["result"]
        blobs = create_model_store(data_dir=data_dir, sqlite=store.sqlite_backend)
        stored = {obj["blob_id"]: blobs.get_bytes(obj["blob_id"]) for obj in objects}
    assert {obj["sender"] for obj in objects} == set(DEFAULT_NODES)
    for obj in objects:
        assert obj["recipients"] == ["agg"]
        blob = stored[obj["blob_id"]]
        assert b"counts" not in blob
        assert b"sum" not in blob


def test_a_node_killed_mid_run_fails_the_analysis_in_bounded_time(
    cluster: Cluster, api: tuple[APIClient, Daemon], tmp_path: Path
) -> None:
    client, controller = api
    for seed, name in enumerate(DEFAULT_NODES, 1):
        write_site(tmp_path / "data" / name, seed)
    nodes = start_nodes(cluster, controller.address, tmp_path / "data")
    analysis_id = client.start_analysis(
        "tests.e2e.flame_wait:main", [*DEFAULT_NODES, "agg"], "agg"
    )["analysis_id"]
    wait_until(
        lambda: all(n["status"] == "executing" for n in client.get_analysis(analysis_id)["nodes"]),
        timeout=60,
        what="every node executing",
    )
    killed = time.monotonic()
    os.kill(nodes["node-2"].process.pid, signal.SIGKILL)
    final = client.wait_for_analysis(analysis_id, timeout=60)
    took = time.monotonic() - killed
    assert final["status"] == "failed"
    assert "node-2" in final["message"]
    assert took < GRACE_SECONDS + 20

    def others_ended() -> bool:
        nodes = client.get_analysis(analysis_id)["nodes"]
        return all(n["status"] in ("stopped", "failed") for n in nodes if n["node_id"] != "node-2")

    wait_until(others_ended, timeout=30, what="the other nodes stopped")
