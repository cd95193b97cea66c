"""Federated analyses (FLAME): start, follow, stop, read logs and download the final result."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedgrpc.api._base import APIBase, page
from fedgrpc.api._records import Record, to_dict, to_list
from fedgrpc.errors import DeadlineExceeded

ANALYSIS_ENDED = ("executed", "failed", "stopped")
POLL_INTERVAL = 0.25


class AnalysisMethods(APIBase):
    def start_analysis(
        self,
        entrypoint: str,
        nodes: Sequence[str],
        aggregator: str,
        *,
        project_id: str = "",
        analysis_id: str = "",
        package_id: str = "",
        settings: Mapping[str, Any] | None = None,
        timeout: float = 0,
    ) -> Record:
        """Run ``entrypoint`` ("module:function", or with ``package_id`` — a package id or
        ``"active"`` — the name of one of its entry points, ``""`` meaning ``"analysis"``) on
        ``nodes``, ``aggregator`` among them. ``timeout`` seconds (0: none) bounds the run.
        The new analysis, status ``starting``. NotFound for an unknown package (or none
        active), InvalidArgument when it has no such module:function entry point."""
        analysis = self.control.start_analysis(
            analysis_id=analysis_id,
            project_id=project_id,
            entrypoint=entrypoint,
            package_id=package_id,
            nodes=list(nodes),
            aggregator=aggregator,
            settings=dict(settings or {}),
            timeout_seconds=timeout,
        )
        return to_dict(analysis)

    def get_analysis(self, analysis_id: str) -> Record:
        """One analysis with each node's role, status and progress. NotFound if unknown."""
        return to_dict(self.control.get_analysis(analysis_id=analysis_id))

    def list_analyses(
        self, n_max: int | None = None, *, project_id: str | None = None, status: str | None = None
    ) -> Record:
        """Analyses, newest first: ``{"count", "result"}``."""
        found = self.control.list_analyses(page=page(n_max), project_id=project_id, status=status)
        return to_list(found)

    def stop_analysis(self, analysis_id: str) -> Record:
        """Stop it on every node; it ends as ``stopped``. FailedPrecondition once ended."""
        return to_dict(self.control.stop_analysis(analysis_id=analysis_id))

    def get_analysis_logs(
        self, analysis_id: str, *, node_id: str = "", log_type: str = ""
    ) -> list[Record]:
        """The nodes' flame_log lines, oldest first."""
        found = self.control.get_analysis_logs(
            analysis_id=analysis_id, node_id=node_id, log_type=log_type
        )
        return [to_dict(entry) for entry in found.logs]

    def download_analysis_result(self, analysis_id: str, path: str | Path | None = None) -> bytes:
        """The aggregator's final result as bytes (also written to ``path`` when given).

        Decode by the content type of ``get_analysis_result_info``: text/plain for str results,
        application/octet-stream for bytes; a pickle is returned as bytes, never unpickled.
        NotFound until the aggregator has submitted one.
        """
        data = bytes(self.control.download_analysis_result(analysis_id=analysis_id).data)
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def get_analysis_result_info(self, analysis_id: str) -> Record:
        """The final result's record: content type, size, sha256, sender, created_at."""
        return to_dict(self.control.download_analysis_result(analysis_id=analysis_id).info)

    def wait_for_analysis(self, analysis_id: str, timeout: float | None = None) -> Record:
        """Wait until the analysis is executed, failed or stopped; its final record.

        DeadlineExceeded when it is still running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            analysis = self.get_analysis(analysis_id)
            if analysis["status"] in ANALYSIS_ENDED:
                return analysis
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"analysis {analysis_id} had not ended after {timeout} s ({analysis['status']})"
                )
            left = POLL_INTERVAL if deadline is None else deadline - time.monotonic()
            time.sleep(max(min(POLL_INTERVAL, left), 0.0))
