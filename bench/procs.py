"""Child processes for the benchmarks: spawning, waiting, stopping, and peak memory.

Peak memory is the kernel's high-water mark of the resident set (``VmHWM`` in
``/proc/<pid>/status``), sampled until just before the process is stopped, so short spikes
between samples are not missed. Linux only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def peak_rss_bytes(pid: int | str = "self") -> int:
    """The process's peak resident set so far in bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int | str = "self") -> float:
    """User plus system CPU time the process has used so far; 0.0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def last_json_line(path: Path) -> dict[str, Any]:
    """The last line of a log that parses as a JSON object ({} if none does)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return {}


@dataclass
class PeakMonitor:
    """Polls the peak RSS of registered processes in a thread."""

    interval: float = 0.2
    peaks: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds at the last sample
    _pids: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self._pids[name] = pid
            self.peaks.setdefault(name, 0)

    def sample(self) -> None:
        with self._lock:
            for name, pid in self._pids.items():
                self.peaks[name] = max(self.peaks[name], peak_rss_bytes(pid))
                self.cpu[name] = max(self.cpu.get(name, 0.0), cpu_seconds(pid))

    def close(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return dict(self.peaks)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


@dataclass
class Child:
    """A benchmark child process and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str,
    python: str,
    module: str,
    args: Sequence[str],
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
) -> Child:
    """Run ``python -m module args`` from the repository root, output to ``log_dir/name.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [python, "-m", module, *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": path, **(env or {})},
        )
    return Child(name=name, process=process, log_path=log_path)


def this_python() -> str:
    return sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float, children: Sequence[Child]) -> None:
    """Block until something accepts connections on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive(children)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {timeout:g}s")


def check_alive(children: Sequence[Child]) -> None:
    dead = [c for c in children if not c.alive()]
    if dead:
        child = dead[0]
        raise RuntimeError(
            f"{child.name} exited with code {child.process.returncode}; its log "
            f"({child.log_path}) ends with:\n{child.log_tail()}"
        )


def stop_all(children: Sequence[Child]) -> None:
    for child in children:
        if child.alive():
            child.process.send_signal(signal.SIGTERM)
    for child in children:
        child.stop()
