"""Which analyses this node runs, kept on disk, so a restarted node reports the ones it lost.

An analysis process dies with its node daemon (its stdin pipe closes). A daemon restarted
within the controller's offline grace would otherwise come back silent about the analysis it
lost, and the controller, which still has the node "executing", would wait for it forever. So
the daemon marks each analysis it starts under its data dir, clears the mark when the analysis
ends while the daemon runs, and at start reports every analysis still marked as failed.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.messaging.v1 import messaging_pb2

LOST = "the node restarted while the analysis ran; its part of the analysis is lost"


class RunningMarks:
    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def add(self, analysis_id: str) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._path(analysis_id).write_text(analysis_id, encoding="utf-8")

    def remove(self, analysis_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(analysis_id).unlink()

    def take_all(self) -> list[str]:
        """The analyses marked by an earlier run of this node; the marks are cleared."""
        if not self._dir.is_dir():
            return []
        found = []
        for path in sorted(self._dir.iterdir()):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                found.append(path.read_text(encoding="utf-8"))
            path.unlink(missing_ok=True)
        return [analysis_id for analysis_id in found if analysis_id]

    def _path(self, analysis_id: str) -> Path:
        # Analysis ids come from the controller: hash them rather than trust them as file names.
        return self._dir / hashlib.sha256(analysis_id.encode()).hexdigest()[:32]


def lost_report(analysis_id: str) -> combiner_pb2.ClientMessage:
    update = messaging_pb2.AnalysisUpdate(
        analysis_id=analysis_id, status="failed", progress=-1, message=LOST
    )
    return combiner_pb2.ClientMessage(analysis_update=update)
