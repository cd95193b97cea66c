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
    needed_kill: bool = False  # it did not exit within the grace time after SIGTERM
    _lines: queue.Queue[str] = field(default_factory=queue.Queue, repr=False)

    @property
    def address(self) -> str:
        return str(self.ready.get("address", ""))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Block until the daemon prints its ready line; fail with its log tail if it dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                if not self.alive:
                    raise Unavailable(
                        f"{self.name} exited with code {self.process.returncode} before it was "
                        f"ready; its log ({self.log_path}) ends with:\n{self.log_tail()}"
                    ) from None
                continue
            message = _json_object(line)
            if message.get("event") == "ready":
                self.ready = message
                return message
        self.kill()
        raise DeadlineExceeded(
            f"{self.name} was not ready within {timeout:g}s; see {self.log_path}"
        )

    def terminate(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 10.0) -> int:
        """Wait for the exit after :meth:`terminate`; SIGKILL when it takes too long."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.needed_kill = True
            self.process.kill()
            self.process.wait()
        return self.process.returncode

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not stopped within ``timeout``."""
        self.terminate()
        return self.wait_stopped(timeout)

    def kill(self) -> None:
        """SIGKILL: no clean-up, no goodbye to peers (the kernel still closes its sockets)."""
        if self.alive:
            self.process.kill()
        self.process.wait()


def start_daemon(
    name: str,
    args: Sequence[str],
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
    wait_ready: bool = True,
) -> Daemon:
    """Run ``python -m fedgrpc <args>``; by default return once it printed its ready line.

    The child's environment is ``base_env`` (default: this process's) updated with ``env``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "fedgrpc", *args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=cwd,
            env={**(os.environ if base_env is None else base_env), **(env or {})},
        )
    daemon = Daemon(name=name, process=process, log_path=log_path, _lines=_drain(process.stdout))
    if wait_ready:
        daemon.wait_ready(timeout)
    return daemon


def _json_object(line: str) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return message if isinstance(message, dict) else {}


def _drain(stream: IO[str] | None) -> queue.Queue[str]:
    """Read stdout in a thread so a chatty child never blocks on a full pipe."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        if stream is not None:
            for line in stream:
                lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines
