"""Flower's own environment for the benchmark, made on first use and reused after.

``flwr==1.41.0`` is the last release with ``start_server``/``start_client`` and needs
``protobuf<7``, while fedgrpc needs ``protobuf>=7.35.1``: the two cannot share an environment,
so Flower cannot sit in the ``bench`` extra. When no Flower interpreter is given,
``python -m bench`` makes a virtual environment under the user's cache directory with exactly
:data:`FLOWER_REQUIREMENT` and runs Flower's processes with its interpreter. Imports nothing
from fedgrpc.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench.flower_run import flower_version

FLOWER_VERSION = "1.41.0"
FLOWER_REQUIREMENT = f"flwr=={FLOWER_VERSION}"
_INSTALL_TIMEOUT = 1800.0


def flower_env_dir() -> Path:
    """Where the environment lives: one per Flower version and Python minor version."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return Path(cache) / "fedgrpc-bench" / f"flwr-{FLOWER_VERSION}-{python}"


def ensure_flower_env(
    directory: Path | None = None, say: Callable[[str], None] = print
) -> str | None:
    """The environment's interpreter, installing Flower first if needed; None (and one line
    saying why) when it cannot be installed, e.g. without network."""
    directory = directory or flower_env_dir()
    python = directory / "bin" / "python"
    if _has_flower(python):
        return str(python)
    say(f"   installing {FLOWER_REQUIREMENT} into {directory} (once; reused by later runs)")
    steps = (
        [sys.executable, "-m", "venv", "--clear", str(directory)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         FLOWER_REQUIREMENT],
    )  # fmt: skip
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as exc:
            say(f"   could not set up Flower ({exc}); its runs are skipped")
            return None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            say(f"   could not set up Flower ({last}); its runs are skipped")
            return None
    return str(python) if _has_flower(python) else None


def _has_flower(python: Path) -> bool:
    return python.exists() and flower_version(str(python)) == FLOWER_VERSION
