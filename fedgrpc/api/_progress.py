"""Following a session until it ends, with a one-line progress bar on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from fedgrpc.api._generated import ControlClientBase
from fedgrpc.api._records import Record, to_dict
from fedgrpc.errors import DeadlineExceeded
from fedgrpc.proto.control.v1 import control_pb2

ENDED = ("finished", "failed", "stopped")
POLL_INTERVAL = 0.25
# The last poll's call gets at least this long, so a deadline that just passed still lets
# one final look at the session happen.
MIN_CALL_SECONDS = 0.5
BAR_WIDTH = 20


def wait_for_session(
    control: ControlClientBase, session_id: str, *, timeout: float | None, progress: bool
) -> Record:
    """Poll the session until it has ended; its final record. DeadlineExceeded on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    # Looked up on every call, not at import, so redirected or captured output is honoured.
    out = sys.stdout
    line = ProgressLine(out) if progress and out.isatty() else None
    try:
        while True:
            session = _poll(control, session_id, deadline, timeout)
            if line is not None:
                line.show(describe(control, session))
            if session.status in ENDED:
                return to_dict(session)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _still_running(session_id, session.status, timeout)
            time.sleep(POLL_INTERVAL if remaining is None else min(POLL_INTERVAL, remaining))
    finally:
        if line is not None:
            line.close()


def _poll(
    control: ControlClientBase, session_id: str, deadline: float | None, timeout: float | None
) -> control_pb2.Session:
    """One GetSession, bounded by what is left of the deadline (but given a moment at least)."""
    if deadline is None:
        return control.get_session(id=session_id)
    try:
        left = max(deadline - time.monotonic(), MIN_CALL_SECONDS)
        return control.get_session(id=session_id, timeout=left)
    except DeadlineExceeded:
        raise _still_running(session_id, "unknown", timeout) from None


def _still_running(session_id: str, status: str, timeout: float | None) -> DeadlineExceeded:
    return DeadlineExceeded(f"session {session_id} had not ended after {timeout} s ({status})")


def describe(control: ControlClientBase, session: control_pb2.Session) -> str:
    """``session <id> [####----] 1/2 rounds  round 2 running  accuracy=0.91``."""
    done, planned = session.rounds_completed, max(session.rounds_planned, 1)
    filled = min(BAR_WIDTH, BAR_WIDTH * done // planned)
    text = f"session {session.id} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] "
    text += f"{done}/{session.rounds_planned} rounds"
    rounds = control.list_rounds(session_id=session.id, page={"limit": 1}).result
    if rounds:
        text += f"  round {rounds[0].round_number} {rounds[0].status}"
    metric = last_metric(control, session.id)
    if metric:
        text += f"  {metric}"
    return text if session.status == "running" else f"{text}  {session.status}"


def last_metric(control: ControlClientBase, session_id: str) -> str:
    """``name=value`` of the newest validation's first numeric metric, or ""."""
    validations = control.list_validations(session_id=session_id, page={"limit": 1}).result
    if not validations:
        return ""
    metrics = validations[0].metrics
    for name in sorted(metrics.keys()):
        value = metrics[name]
        if isinstance(value, float):  # a Struct keeps every number as a double
            return f"{name}={value:.4g}"
    return ""


class ProgressLine:
    """One terminal line, rewritten in place; ended with a newline when closed."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._shown = False

    def show(self, text: str) -> None:
        # \r returns to the line's start; ESC[K clears what a longer previous text left.
        self._out.write(f"\r{text}\x1b[K")
        self._out.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self._out.write("\n")
            self._out.flush()
