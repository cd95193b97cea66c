"""Make a generator script run with the development tools, whichever ``python`` started it.

The scripts need grpcio-tools and protobuf (the ``dev`` extra). When they are missing from the
interpreter that ran the script (e.g. a hook calling the system ``python``), the script is
re-run with the repository's own virtual environment if there is one (``.venv``, as the README
creates, or ``.ci-venv``); otherwise it stops with one line saying what to install.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_DIRS = (".venv", ".ci-venv")


def ensure(modules: Sequence[str]) -> None:
    """Return if ``modules`` import here; else re-exec in a repo venv, or exit 1 saying why."""
    missing = [name for name in modules if not _importable(name)]
    if not missing:
        return
    for venv in VENV_DIRS:
        python = REPO_ROOT / venv / "bin" / "python"
        # Compare environments, not binaries: a venv's python links to the system one.
        if python.exists() and Path(sys.prefix).resolve() != (REPO_ROOT / venv).resolve():
            os.execv(str(python), [str(python), *sys.argv])
    sys.exit(
        f"{Path(sys.argv[0]).name}: missing {', '.join(missing)}; install the dev tools "
        "(pip install -e '.[dev]') or run it with the project's virtual environment"
    )


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False
