"""FLAME's ``flame_log`` and ``declare_log_types``.

Every log is printed like ``print`` (``sep``, ``end``, ``file``) and submitted to the node,
which batches logs to the controller. Logs that could not be submitted (node busy or not yet
reachable) are queued and go out with the next one.

Error logs: FLAME sleeps forever after an ``error`` log, so the analysis hangs in "running".
Here a log of type ``error`` or ``critical-error`` (or a declared type mapped to ``error`` or
``crit``) is submitted at once and then raises :class:`FlameLogError`: the analysis ends as
failed with that message unless the author catches it and carries on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import IO, Any

from google.protobuf.timestamp_pb2 import Timestamp

from fedgrpc.errors import FailedPrecondition, FedgrpcError
from fedgrpc.proto.messaging.v1 import node_pb2

LOG_TYPES = (
    "info",
    "normal",
    "notice",
    "debug",
    "warning",
    "alert",
    "emergency",
    "error",
    "critical-error",
)
DECLARABLE = ("info", "notice", "debug", "warn", "alert", "emerg", "error", "crit")
FATAL = frozenset({"error", "critical-error", "crit"})


class FlameLogError(FailedPrecondition):
    """An ``error``-type flame_log: the analysis cannot go on (FLAME halts here)."""


class FlameLogger:
    def __init__(self, submit: Callable[[Sequence[node_pb2.LogLine]], None]) -> None:
        self._submit = submit
        self._declared: dict[str, str] = {}
        self._queued: list[node_pb2.LogLine] = []
        self._held = ""

    def declare(self, new_log_types: dict[str, str]) -> list[str]:
        """Add custom types; returns complaints about values FLAME does not know."""
        problems = []
        for name, literal in dict(new_log_types).items():
            if literal not in DECLARABLE:
                problems.append(
                    f"declare_log_types: {name!r} maps to {literal!r}; allowed: "
                    f"{', '.join(DECLARABLE)}"
                )
                continue
            self._declared[str(name)] = literal
        return problems

    def log(
        self,
        msg: Any,
        *,
        sep: str = " ",
        end: str = "\n",
        file: IO[str] | None = None,
        log_type: str = "normal",
        suppress_head: bool = False,
        halt_submission: bool = False,
    ) -> None:
        if log_type not in LOG_TYPES and log_type not in self._declared:
            known = ", ".join([*LOG_TYPES, *self._declared])
            raise ValueError(f"unknown log_type {log_type!r}; known: {known} (declare_log_types)")
        items = msg if isinstance(msg, tuple) else (msg,)
        text = sep.join(
            i.decode(errors="replace") if isinstance(i, bytes) else str(i) for i in items
        )
        head = "" if suppress_head else _head(log_type)
        print(head + text, end=end, file=file or sys.stdout, flush=True)
        self._held += head + text
        if halt_submission:
            return
        line = _line(log_type, self._held)
        self._held = ""
        self.send([line])
        if self._is_fatal(log_type):
            raise FlameLogError(f"analysis stopped by an {log_type} log: {text}")

    def send(self, lines: Sequence[node_pb2.LogLine]) -> None:
        pending, self._queued = [*self._queued, *lines], []
        try:
            self._submit(pending)
        except FedgrpcError:
            self._queued = pending  # the node is not reachable now; the next log retries

    def _is_fatal(self, log_type: str) -> bool:
        return log_type in FATAL or self._declared.get(log_type) in FATAL


def _head(log_type: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return f"[flame -- {log_type.upper()}: {stamp}] "


def _line(log_type: str, message: str) -> node_pb2.LogLine:
    created = Timestamp()
    created.GetCurrentTime()
    return node_pb2.LogLine(log_type=log_type, message=message, created_at=created)
