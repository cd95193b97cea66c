"""The README's main job, ``fedgrpc run``, as a user runs it: a subprocess through the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
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
