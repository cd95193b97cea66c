"""The README's main job, ``fedgrpc run``, as a user runs it: a subprocess through the CLI."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedgrpc.quickstart import digits


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_fedgrpc_run_trains_a_federated_model(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedgrpc", "run", "--rounds", "3", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rounds = re.findall(r"^\s+(\d+)\s+4\s+[\d.]+\s+([\d.]+)$", proc.stdout, re.MULTILINE)
    assert [int(number) for number, _ in rounds] == [1, 2, 3], proc.stdout
    final = re.search(r"federated model test accuracy ([\d.]+); best single client", proc.stdout)
    assert final is not None, proc.stdout
    # Ten classes: chance is 0.1. A floor far above it, not a tuned number.
    assert float(final.group(1)) > 0.6
    logs = sorted(path.name for path in (tmp_path / "logs").iterdir())
    assert logs == [
        "client-0.log",
        "client-1.log",
        "client-2.log",
        "client-3.log",
        "combiner.log",
        "controller.log",
    ]


def test_partition_is_label_skewed_and_complete() -> None:
    train, _ = digits.train_test()
    shards = digits.partition(train.y, 4)
    merged = sorted(index for shard in shards for index in shard.tolist())
    assert merged == list(range(len(train.y)))
    histograms = [[(train.y[shard] == label).sum() for label in range(10)] for shard in shards]
    assert any(min(counts) <= 2 for counts in histograms)  # some client barely sees some digit


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_ctrl_c_stops_every_process_it_started(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedgrpc", "run", "--rounds", "200", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # bounded by the test timeout
            if line.strip().startswith("1 "):
                break
        children = _children(proc.pid)
        assert len(children) == 6  # controller, combiner, four clients
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in children):
            assert time.monotonic() < deadline, "children still running after Ctrl-C"
            time.sleep(0.1)
    finally:
        proc.kill()
