"""``python -m fedgrpc.flame.runner``: runs one analysis for the node that spawned it.

The node sets the environment (node service address, the analysis' secret and id, the entry
point, extra ``sys.path`` entries). The process exits when the node goes away: its stdin is a
pipe from the node that nobody writes to, and end-of-file there means the node process is gone
(however it died), so no analysis outlives its node.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from pathlib import Path

ORPHANED_EXIT = 75


def _exit_when_node_gone() -> None:
    # os.read on the raw descriptor: a daemon thread blocked in sys.stdin's buffered reader
    # would abort the interpreter at exit (it holds the buffer's lock).
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    print("fedgrpc runner: the node is gone; exiting", file=sys.stderr, flush=True)
    os._exit(ORPHANED_EXIT)


def main() -> int:
    for entry in reversed(os.environ.get("FEDGRPC_ANALYSIS_PYTHON_PATH", "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
    threading.Thread(target=_exit_when_node_gone, name="node-watch", daemon=True).start()
    from fedgrpc.client.entry import load_analysis_entry
    from fedgrpc.errors import FedgrpcError

    package = os.environ.get("FEDGRPC_ANALYSIS_PACKAGE_DIR") or None
    spec = os.environ.get("FEDGRPC_ANALYSIS_ENTRYPOINT", "")
    try:
        function = load_analysis_entry(spec, Path(package) if package else None)
    except FedgrpcError as exc:
        # A wrong entry point or package: one line says it all (it ends up as the node's
        # failure message); a traceback into fedgrpc's loader would only bury it.
        print(f"fedgrpc runner: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        function()
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
