"""``FlameCoreSDK``: FLAME's Python Core SDK on fedgrpc (same names, parameters, returns).

A FLAME analysis runs on fedgrpc by changing its import to
``from fedgrpc.flame import FlameCoreSDK``. The SDK talks to the node it runs on (the node
service, found through the environment the node's runner sets); the node does the messaging,
storage, encryption and reporting. Where fedgrpc deliberately differs from FLAME:

- ``flame_log(log_type="error")`` raises :class:`FlameLogError` after submitting the log
  (FLAME sleeps forever);
- ``send_message_and_wait_for_responses(timeout=None)`` waits as long as it takes (FLAME
  crashes); retries back off exponentially with jitter;
- intermediate data is never pickled unless ``FlameCoreSDK(allow_pickle=True)``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from fedgrpc.flame._logs import FlameLogError, FlameLogger
from fedgrpc.flame._node import NodeConnection
from fedgrpc.flame._storage import StorageMixin
from fedgrpc.flame.datasources import DataSourceSet, parse_data_sources
from fedgrpc.flame.message import Message
from fedgrpc.proto.messaging.v1 import node_pb2

__all__ = ["FlameCoreSDK", "FlameLogError", "Message"]


class FlameCoreSDK(StorageMixin):
    def __init__(
        self,
        silent: bool = False,
        *,
        allow_pickle: bool = False,
        node_address: str | None = None,
        secret: str | None = None,
    ) -> None:
        self._silent = silent
        self._allow_pickle = allow_pickle
        self._node = NodeConnection(node_address, secret)
        self._logger = FlameLogger(self._submit_logs)
        self._context = self._node.call(
            self._node.stub.GetContext, node_pb2.GetContextRequest(), timeout=30
        )
        self._progress = int(self._context.progress)
        self._data: DataSourceSet | None = None
        if not silent:
            self.flame_log(
                f"connected to node {self.get_id()} as {self.get_role()} in analysis "
                f"{self.get_analysis_id()} ({len(self._context.participants)} nodes)",
                log_type="info",
            )

    # --- identity -------------------------------------------------------------------------

    def get_id(self) -> str:
        return str(self._context.node_id)

    def get_role(self) -> str:
        return str(self._context.role)

    def get_analysis_id(self) -> str:
        return str(self._context.analysis_id)

    def get_project_id(self) -> str:
        return str(self._context.project_id)

    def get_aggregator_id(self) -> str | None:
        """The aggregator's node id, or None when called on the aggregator itself."""
        if self.get_role() == "aggregator":
            return None
        return next((p.node_id for p in self._context.participants if p.role == "aggregator"), None)

    def get_participants(self) -> list[dict[str, str]]:
        """The other nodes: ``{"nodeId": ..., "nodeType": "aggregator" | "default"}``."""
        return [
            {"nodeId": p.node_id, "nodeType": p.role}
            for p in self._context.participants
            if p.node_id != self.get_id()
        ]

    def get_participant_ids(self) -> list[str]:
        return [p["nodeId"] for p in self.get_participants()]

    # --- general --------------------------------------------------------------------------

    def ready_check(
        self,
        nodes: list[str] | str = "all",
        attempt_interval: int = 30,
        timeout: float | None = None,
    ) -> dict[str, bool]:
        """Wait until the nodes run their analysis; re-asks every ``attempt_interval`` s."""
        wanted = self.get_participant_ids() if nodes == "all" else list(nodes)
        ready = dict.fromkeys(wanted, False)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not all(ready.values()):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            wait = attempt_interval if left is None else min(attempt_interval, left)
            response = self._node.call(
                self._node.stub.ReadyCheck,
                node_pb2.ReadyCheckRequest(
                    nodes=[n for n, ok in ready.items() if not ok], timeout=max(wait, 0.001)
                ),
            )
            ready.update({n: ok for n, ok in response.ready.items() if ok})
        return ready

    def flame_log(
        self,
        msg: str | bytes,
        sep: str = " ",
        end: str = "\n",
        file: IO[str] | None = None,
        log_type: str = "normal",
        suppress_head: bool = False,
        halt_submission: bool = False,
    ) -> None:
        self._logger.log(
            msg,
            sep=sep,
            end=end,
            file=file,
            log_type=log_type,
            suppress_head=suppress_head,
            halt_submission=halt_submission,
        )

    def declare_log_types(self, new_log_types: dict[str, str]) -> None:
        for problem in self._logger.declare(new_log_types):
            # "logs error if unknown literal is used": reported, not fatal.
            print(problem, file=sys.stderr)
            self._logger.send([node_pb2.LogLine(log_type="error", message=problem)])

    def get_progress(self) -> int:
        return self._progress

    def set_progress(self, progress: int | float) -> None:
        """Monotone: an equal or lower value (or one outside 0-100) is ignored with a warning."""
        value = int(progress)
        if not 0 <= value <= 100:
            self.flame_log(
                f"progress must be between 0 and 100, got {progress}", log_type="warning"
            )
            return
        if value <= self._progress:
            self.flame_log(
                f"progress only increases: {value} is not above the current {self._progress}",
                log_type="warning",
            )
            return
        response = self._node.call(self._node.stub.Report, node_pb2.ReportRequest(progress=value))
        self._progress = max(value, int(response.progress))

    def analysis_finished(self) -> bool:
        """Tell the partner nodes this node is done, then mark it done."""
        self._node.call(self._node.stub.Finish, node_pb2.FinishRequest())
        return True

    # --- data sources ---------------------------------------------------------------------

    def _sources(self) -> DataSourceSet:
        if self._data is None:
            raw = json.loads(self._context.data_sources_json or "[]")
            self._data = DataSourceSet(parse_data_sources(raw))
        return self._data

    def get_data_sources(self) -> list[dict[str, Any]]:
        return self._sources().get_data_sources()

    def get_data_client(self, data_id: str) -> Any:
        try:
            return self._sources().get_data_client(data_id)
        except ValueError as exc:
            self._logger.send([node_pb2.LogLine(log_type="error", message=str(exc))])
            raise

    def get_fhir_data(self, fhir_queries: list[str] | None = None) -> list[dict[str, Any]] | None:
        return self._sources().get_fhir_data(fhir_queries)

    def get_s3_data(self, s3_keys: list[str] | None = None) -> list[dict[str, Any]] | None:
        return self._sources().get_s3_data(s3_keys)

    # --- plumbing -------------------------------------------------------------------------

    def _submit_logs(self, lines: Sequence[node_pb2.LogLine]) -> None:
        self._node.call(self._node.stub.Report, node_pb2.ReportRequest(logs=lines, progress=-1))
