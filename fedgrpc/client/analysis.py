"""One analysis process on a node: spawn, watch, report, stop.

The process is ``python -m fedgrpc.flame.runner`` with the node service's address, the
analysis' secret and id in its environment. Its stdin is a pipe nobody writes to: when the
daemon dies (however it dies) the pipe closes and the runner exits, so no analysis outlives
its node. Status, progress and logs go to the controller as ``AnalysisUpdate``s; logs are
batched and flushed at least every 0.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from fedgrpc.client.spawn import ChildProcess, spawn
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.messaging.v1 import messaging_pb2

log = logging.getLogger(__name__)

LOG_FLUSH_SECONDS = 0.5
STDERR_TAIL = 20

STARTED, EXECUTING, EXECUTED, FAILED, STOPPED = (
    "started",
    "executing",
    "executed",
    "failed",
    "stopped",
)
TERMINAL = (EXECUTED, FAILED, STOPPED)


class UpdateReporter:
    """Sends a node's AnalysisUpdates: status and progress at once, logs in ≤0.5 s batches."""

    def __init__(
        self, analysis_id: str, send: Callable[[combiner_pb2.ClientMessage], None]
    ) -> None:
        self.analysis_id = analysis_id
        self._send = send
        self._logs: list[messaging_pb2.LogEntry] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self.status = ""
        self.progress = 0

    def log(self, log_type: str, message: str, created_at: Timestamp | None = None) -> None:
        if created_at is None:
            created_at = Timestamp()
            created_at.GetCurrentTime()
        self._logs.append(
            messaging_pb2.LogEntry(log_type=log_type, message=message, created_at=created_at)
        )
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(LOG_FLUSH_SECONDS, self.flush)

    def set_progress(self, progress: int) -> int:
        """Record a higher progress (lower or equal values are ignored); the value kept."""
        if progress > self.progress:
            self.progress = min(100, progress)
            self._emit(progress=self.progress)
        return self.progress

    def set_status(self, status: str, message: str = "") -> None:
        if self.status in TERMINAL or status == self.status:
            return  # terminal states are final
        self.status = status
        self._emit(status=status, message=message)

    def flush(self) -> None:
        if self._logs:
            self._emit()

    def _emit(self, *, status: str = "", progress: int = -1, message: str = "") -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        logs, self._logs = self._logs, []
        update = messaging_pb2.AnalysisUpdate(
            analysis_id=self.analysis_id,
            status=status,
            progress=progress,
            logs=logs,
            message=message[:4000],
        )
        self._send(combiner_pb2.ClientMessage(analysis_update=update))


def runner_environment(
    task: messaging_pb2.AnalysisTask,
    *,
    node_address: str,
    secret: str,
    python_path: Sequence[str],
    package_dir: Path | None,
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "FEDGRPC_NODE_ADDRESS": node_address,
            "FEDGRPC_ANALYSIS_SECRET": secret,
            "FEDGRPC_ANALYSIS_ID": task.analysis_id,
            "FEDGRPC_ANALYSIS_ENTRYPOINT": task.entrypoint,
            "FEDGRPC_ANALYSIS_PACKAGE_DIR": str(package_dir or ""),
            "FEDGRPC_ANALYSIS_SETTINGS": json.dumps(MessageToDict(task.settings)),
            "FEDGRPC_ANALYSIS_PYTHON_PATH": os.pathsep.join(python_path),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class AnalysisProcess:
    """The runner subprocess of one analysis and its outcome."""

    def __init__(self, reporter: UpdateReporter, *, stop_grace: float) -> None:
        self._reporter = reporter
        self._grace = stop_grace
        self._process: ChildProcess | None = None
        self._stderr: deque[str] = deque(maxlen=STDERR_TAIL)
        self._stop_reason: str | None = None
        self.done = asyncio.Event()

    async def start(self, env: Mapping[str, str], *, timeout: float | None = None) -> None:
        self._process = await spawn([sys.executable, "-m", "fedgrpc.flame.runner"], env=env)
        self._reporter.set_status(STARTED)
        self._watcher = asyncio.ensure_future(self._watch(timeout))

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def stop(self, reason: str, *, status: str = STOPPED) -> None:
        """SIGTERM, then SIGKILL after the grace; reported as ``status`` with ``reason``."""
        if self._process is None or self.done.is_set():
            return
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_status = status
        with contextlib.suppress(ProcessLookupError):
            self._process.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(self.done.wait()), self._grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self.done.wait()

    async def _watch(self, timeout: float | None) -> None:
        assert self._process is not None
        process = self._process
        pumps = asyncio.gather(self._pump_stdout(), self._pump_stderr())
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            self._stopper = asyncio.ensure_future(
                self.stop(f"analysis timed out after {timeout:g}s", status=FAILED)
            )
            await process.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pumps, 2.0)
        self._report_exit(process.returncode)
        self.done.set()

    def _report_exit(self, code: int | None) -> None:
        self._reporter.flush()
        if self._stop_reason is not None:
            self._reporter.set_status(self._stop_status, self._stop_reason)
        elif code == 0:
            self._reporter.set_status(EXECUTED)
        else:
            tail = "\n".join(self._stderr)
            self._reporter.set_status(FAILED, f"analysis exited with code {code}\n{tail}".strip())

    async def _pump_stdout(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        # flame_log reaches the controller through the node service; stdout is for the node's
        # own log only (forwarding it too would record every flame_log twice).
        async for line in self._process.stdout:
            log.debug("analysis %s: %s", self._reporter.analysis_id, line.decode(errors="replace"))

    async def _pump_stderr(self) -> None:
        assert self._process is not None
        assert self._process.stderr is not None
        async for raw in self._process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self._stderr.append(line)
            self._reporter.log("stderr", line)
