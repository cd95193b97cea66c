"""Start fedgrpc daemons as child processes and read their ready line.

Used by ``fedgrpc run`` and by the end-to-end tests: every daemon prints one JSON line on
stdout when it serves (see :mod:`fedgrpc.cli.daemon`); this waits for it with a deadline and
fails with the tail of the daemon's log when it dies first.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedgrpc.errors import DeadlineExceeded, Unavailable


@dataclass
class Daemon:
    """A running daemon: its process, its ready line and its log file."""

    name: str
    process: subprocess.Popen[str]
    log_path: Path
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return str(self.ready.get("address", ""))

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not stopped within ``timeout``."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()


def start_daemon(
    name: str,
    args: Sequence[str],
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    wait_ready: bool = True,
) -> Daemon:
    """Run ``python -m fedgrpc <args>``; return once it printed its ready line."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "fedgrpc", *args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
    daemon = Daemon(name=name, process=process, log_path=log_path)
    lines = _drain(process.stdout)
    if wait_ready:
        daemon.ready = _await_ready(daemon, lines, timeout)
    return daemon


def _drain(stream: IO[str] | None) -> queue.Queue[str]:
    """Read stdout in a thread so a chatty child never blocks on a full pipe."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        if stream is not None:
            for line in stream:
                lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _await_ready(daemon: Daemon, lines: queue.Queue[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            if not daemon.alive():
                raise Unavailable(
                    f"{daemon.name} exited with code {daemon.process.returncode} before it was "
                    f"ready; its log ({daemon.log_path}) ends with:\n{daemon.log_tail()}"
                ) from None
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(message, dict) and message.get("event") == "ready":
            return message
    daemon.kill()
    raise DeadlineExceeded(
        f"{daemon.name} was not ready within {timeout:g}s; see {daemon.log_path}"
    )
