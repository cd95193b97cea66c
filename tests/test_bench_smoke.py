"""The benchmark harness at tiny sizes, so it cannot rot: every suite on fedgrpc, and the
compared workloads on Flower when an interpreter with ``flwr`` is available (this one, or
``$BENCH_FLOWER_PYTHON``; Flower needs protobuf<7, so it usually lives in its own venv)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.flower_run import find_flower_python
from bench.workload import Workload, initial_model, is_correct, max_error, train_step

pytestmark = pytest.mark.e2e

COMPARED = ("overhead", "bandwidth", "fanout")


def test_the_check_accepts_fedavg_and_rejects_anything_else() -> None:
    workload = Workload("check", clients=3, params=2_500, rounds=2)
    model = initial_model(workload.params)
    for _ in range(workload.rounds):
        updates = [train_step([model[0].copy()], i)[0] for i in range(workload.clients)]
        model = [np.asarray(np.mean(updates, axis=0, dtype=np.float64), dtype=np.float32)]
    assert is_correct(max_error(model, workload))
    assert not is_correct(max_error([model[0] + 0.001], workload))
    assert not is_correct(max_error([model[0][:-1]], workload))
    assert not is_correct(max_error([np.full_like(model[0], np.nan)], workload))


def test_every_suite_runs_on_fedgrpc_at_tiny_size(tmp_path: Path) -> None:
    suite = main(["--quick", "--no-flower", "--out", str(tmp_path)])

    assert {r.workload for r in suite.runs} == set(COMPARED)
    for run in suite.runs:
        assert run.ok, f"{run.workload}: {run.failure}"
        assert len(run.round_seconds) == run.rounds
        assert run.peak_rss["combiner"] > 0
        assert run.peak_rss["client"] > 0
    assert suite.scale["target_ok"], suite.scale["attempts"][0]["failure"]
    assert {k.name for k in suite.kernels} >= {"ModelService upload", "ModelService download"}
    assert all(k.throughput > 0 and k.limit_throughput > 0 for k in suite.kernels)
    written = json.loads((tmp_path / "results.json").read_text())
    assert len(written["runs"]) == len(COMPARED)
    assert "| target |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 0


@pytest.mark.skipif(find_flower_python() is None, reason="no interpreter with flwr installed")
def test_flower_runs_the_compared_workloads_at_tiny_size(tmp_path: Path) -> None:
    args = ["--quick", "--out", str(tmp_path)]
    suite = main([*args, *(f"--suite={name}" for name in COMPARED)])

    flower = [r for r in suite.runs if r.framework == "flower"]
    assert {r.workload for r in flower} == set(COMPARED)
    for run in flower:
        assert run.ok, f"{run.workload}: {run.failure}"
        assert len(run.round_seconds) == run.rounds
        assert run.peak_rss["server"] > 0
