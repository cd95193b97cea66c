"""The benchmark harness at tiny sizes, so it cannot rot: every suite on fedgrpc, and the
compared workloads on Flower in its own environment (``$BENCH_FLOWER_PYTHON``, or the venv
``python -m bench`` makes once under the user cache; Flower needs protobuf<7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.flower_env import FLOWER_REQUIREMENT, ensure_flower_env
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


def test_flower_runs_the_compared_workloads_at_tiny_size(tmp_path: Path) -> None:
    python = find_flower_python() or ensure_flower_env()
    if python is None:  # no network to install it from: nothing of ours to test
        pytest.skip(f"could not install {FLOWER_REQUIREMENT}")
    args = ["--quick", "--out", str(tmp_path), "--flower-python", python]
    suite = main([*args, *(f"--suite={name}" for name in COMPARED)])

    flower = [r for r in suite.runs if r.framework == "flower"]
    assert {r.workload for r in flower} == set(COMPARED)
    for run in flower:
        assert run.ok, f"{run.workload}: {run.failure}"
        assert len(run.round_seconds) == run.rounds
        assert run.peak_rss["server"] > 0


def test_a_flower_env_that_cannot_be_made_is_skipped_with_one_line(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the venv should go")
    said: list[str] = []
    assert ensure_flower_env(blocked, say=said.append) is None
    assert len(said) == 2
    assert "could not set up Flower" in said[1]


def test_repeated_runs_take_turns_and_keep_their_own_logs(tmp_path: Path) -> None:
    suite = main(
        ["--quick", "--no-flower", "--suite=overhead", "--repeat=2", "--out", str(tmp_path)]
    )

    assert [(r.framework, r.repeat, r.ok) for r in suite.runs] == [
        ("fedgrpc", 0, True),
        ("fedgrpc", 1, True),
    ]
    logs = tmp_path / "logs" / "overhead" / "fedgrpc"
    assert {p.name for p in logs.iterdir()} >= {"0", "1"}
    assert all(any((logs / name).iterdir()) for name in ("0", "1"))
    written = json.loads((tmp_path / "results.json").read_text())
    assert [run["repeat"] for run in written["runs"]] == [0, 1]
    assert "fedgrpc #2" in (tmp_path / "results.md").read_text()
