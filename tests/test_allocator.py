"""fedgrpc.allocator: glibc keeps model-sized buffers mapped between uses once tuned."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the thresholds are glibc's",
)

# Two 400 kB buffers alive at once, then both freed, 300 times: a fan-out client's pattern
# (a received message and its model field). Prints what tune_allocator said and the minor
# page faults the loop took.
_PROBE = """
import json, resource, sys
from fedgrpc.allocator import tune_allocator
tuned = tune_allocator() if sys.argv[1] == "tune" else None
source = bytes(400_000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(300):
    first, second = bytearray(source), bytearray(source)
    del first, second
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def _probe(mode: str, **environment: str) -> dict[str, Any]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MALLOC_", "GLIBC_TUNABLES"))
    }
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        env={**env, **environment},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def test_tuned_buffers_are_reused_instead_of_faulted_in_again() -> None:
    untuned = _probe("plain")
    tuned = _probe("tune")
    assert tuned["tuned"] is True
    # 300 rounds of 2 x 98 pages: glibc's defaults fault most of them in again.
    assert untuned["faults"] > 10_000, untuned
    assert tuned["faults"] < untuned["faults"] // 10, (tuned, untuned)


def test_glibc_settings_from_the_environment_win() -> None:
    result = _probe("tune", MALLOC_TRIM_THRESHOLD_=str(1 << 20))
    assert result["tuned"] is False
