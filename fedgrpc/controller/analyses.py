"""Federated analyses on the controller: start, stop, node reports, offline grace and timeouts.

State lives in the statestore; in memory there are only timers (a node's offline grace, an
analysis' timeout) and the set of running analyses, rebuilt from the statestore at start-up.
Nothing can stay running forever: after a restart every node of a running analysis starts its
offline grace, and a node that does not come back fails the analysis.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from fedgrpc.config import ControllerConfig
from fedgrpc.controller import analysis_status as rules
from fedgrpc.controller import packages
from fedgrpc.controller.broker import Broker
from fedgrpc.controller.registry import CombinerRegistry
from fedgrpc.errors import FailedPrecondition, InvalidArgument, NotFound
from fedgrpc.packages.manifest import ANALYSIS_ENTRY, check_analysis_entry
from fedgrpc.proto.messaging.v1 import messaging_pb2 as mpb
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.statestore import Record, StateStore
from fedgrpc.statestore.base import new_id
from fedgrpc.transfer import dict_to_struct

log = logging.getLogger(__name__)

RUNNING = ["starting", "started", "executing"]


class Analyses:
    def __init__(
        self,
        *,
        config: ControllerConfig,
        store: StateStore,
        registry: CombinerRegistry,
        broker: Broker,
    ) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.broker = broker
        self._running: dict[str, tuple[str, ...]] = {}  # analysis id -> its nodes
        self._offline: dict[str, asyncio.Task[None]] = {}  # node -> grace timer
        # node -> ended analyses it has not confirmed stopping: a stop lost with a combiner
        # link is sent again when the node shows up again (its combiner re-registers).
        self._unstopped: dict[str, set[str]] = {}
        self._timeouts: dict[str, asyncio.Task[None]] = {}
        self._work: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        found = await asyncio.to_thread(self.store.analyses.list, status=RUNNING)
        for record in found["result"]:
            self._track(record)
            for node in record["nodes"]:
                if not self._online(node["node_id"]):
                    self.client_offline(node["node_id"])
        self._worker = asyncio.ensure_future(self._run_work())

    async def stop(self) -> None:
        tasks = [*self._offline.values(), *self._timeouts.values()]
        if self._worker is not None:
            self._work.put_nowait(None)
            tasks.append(self._worker)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the control API ------------------------------------------------------------------

    async def start_analysis(
        self,
        *,
        analysis_id: str,
        project_id: str,
        entrypoint: str,
        package_id: str,
        nodes: Sequence[str],
        aggregator: str,
        settings: dict[str, Any],
        timeout_seconds: float,
    ) -> Record:
        names = _check_request(nodes, aggregator, entrypoint, package_id, timeout_seconds)
        clients = await asyncio.to_thread(self._clients, names)
        offline = [name for name in names if not self._online(name)]
        if offline:
            raise FailedPrecondition(f"nodes not connected: {', '.join(offline)}")
        package = await asyncio.to_thread(self._resolve_package, package_id, entrypoint)
        record = await asyncio.to_thread(
            self.store.analyses.create,
            id=analysis_id or new_id(),
            project_id=project_id or "default",
            entrypoint=entrypoint or ANALYSIS_ENTRY,
            package_id=str(package["id"]) if package else "",
            package_sha256=str(package["sha256"]) if package else "",
            nodes=names,
            aggregator=aggregator,
            settings=settings,
            timeout_seconds=timeout_seconds,
        )
        self._track(record)
        participants = [
            mpb.Participant(node_id=name, role=_role(name, aggregator), public_key=clients[name])
            for name in names
        ]
        for name in names:
            self._send(
                name,
                network_pb2.ControllerCommand(start_analysis=_task(record, name, participants)),
            )
        log.info("analysis %s started on %s", record["id"], ", ".join(names))
        return record

    async def stop_analysis(self, analysis_id: str) -> Record:
        record = await asyncio.to_thread(self.store.analyses.get, analysis_id)
        if rules.is_terminal(record["status"]):
            raise FailedPrecondition(f"analysis {analysis_id} has ended ({record['status']})")
        return await self._end(analysis_id, "stopped", "stopped by the user")

    # --- node reports and client presence (called from the link handler) -----------------

    def update(self, update: mpb.AnalysisUpdate) -> None:
        self._work.put_nowait(lambda: self._apply(update))

    def client_online(self, name: str) -> None:
        timer = self._offline.pop(name, None)
        if timer is not None:
            timer.cancel()
        if self._unstopped.get(name):
            self._work.put_nowait(lambda: self._resend_stops(name))
        if any(name in nodes for nodes in self._running.values()):
            self._work.put_nowait(lambda: self._resend_tasks(name))

    def client_offline(self, name: str) -> None:
        if name in self._offline or not any(name in n for n in self._running.values()):
            return
        self._offline[name] = asyncio.ensure_future(self._grace(name))

    # --- the work -------------------------------------------------------------------------

    async def _run_work(self) -> None:
        while (job := await self._work.get()) is not None:
            try:
                await job()
            except Exception:  # one bad report must not stop the ones behind it
                log.exception("analysis update failed")

    async def _apply(self, update: mpb.AnalysisUpdate) -> None:
        if update.logs:
            await asyncio.to_thread(self._store_logs, update)
        if update.status and update.status not in rules.NODE_REPORTED:
            log.warning("node %s reported unknown status %r", update.node_id, update.status)
            return
        if update.status or update.progress >= 0:
            await self._node_report(
                update.analysis_id, update.node_id, update.status, update.progress, update.message
            )

    async def _node_report(
        self, analysis_id: str, node_id: str, status: str, progress: int, message: str
    ) -> None:
        def change(record: Record) -> dict[str, Any] | None:
            return rules.apply_report(
                record, node_id, status=status, progress=progress, message=message
            )

        try:
            record = await asyncio.to_thread(self.store.analyses.modify, analysis_id, change)
        except NotFound:
            return
        if rules.is_terminal(status):
            self._unstopped.get(node_id, set()).discard(analysis_id)
        if rules.is_terminal(record["status"]) and analysis_id in self._running:
            self._finished(record)

    async def _end(self, analysis_id: str, status: str, message: str) -> Record:
        record = await asyncio.to_thread(
            self.store.analyses.modify,
            analysis_id,
            lambda current: rules.ended(current, status, message),
        )
        if analysis_id in self._running:
            self._finished(record)
        return record

    def _finished(self, record: Record) -> None:
        """An analysis reached a terminal status: stop its other nodes, drop its timers."""
        analysis_id = record["id"]
        self._running.pop(analysis_id, None)
        timer = self._timeouts.pop(analysis_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        self.broker.analysis_ended(analysis_id)
        for node in record["nodes"]:
            if not rules.is_terminal(node["status"]):
                self._unstopped.setdefault(node["node_id"], set()).add(analysis_id)
                self._send_stop(analysis_id, node["node_id"], record["message"])
        log.info("analysis %s %s %s", analysis_id, record["status"], record["message"])

    def _send_stop(self, analysis_id: str, node_id: str, reason: str) -> None:
        stop = mpb.StopAnalysis(analysis_id=analysis_id, node_id=node_id, reason=reason)
        self._send(node_id, network_pb2.ControllerCommand(stop_analysis=stop))

    async def _resend_stops(self, name: str) -> None:
        for analysis_id in sorted(self._unstopped.get(name, ())):
            record = await asyncio.to_thread(self.store.analyses.get, analysis_id)
            node = next(n for n in record["nodes"] if n["node_id"] == name)
            if rules.is_terminal(node["status"]):
                self._unstopped[name].discard(analysis_id)
            else:
                self._send_stop(analysis_id, name, record["message"])

    async def _grace(self, name: str) -> None:
        await asyncio.sleep(self.config.analysis_node_grace_seconds)
        self._offline.pop(name, None)
        grace = self.config.analysis_node_grace_seconds
        message = f"node went offline (not back within {grace:g}s)"
        for analysis_id, nodes in list(self._running.items()):
            if name in nodes:
                self._queue_report(analysis_id, name, "failed", message)

    def _queue_report(self, analysis_id: str, node_id: str, status: str, message: str) -> None:
        self._work.put_nowait(lambda: self._node_report(analysis_id, node_id, status, -1, message))

    async def _timeout(self, analysis_id: str, delay: float) -> None:
        await asyncio.sleep(max(delay, 0.0))
        await self._end(analysis_id, "failed", "timed out")

    async def _resend_tasks(self, name: str) -> None:
        """A node back within its grace gets the start tasks it may have missed."""
        for analysis_id, nodes in list(self._running.items()):
            if name not in nodes:
                continue
            record = await asyncio.to_thread(self.store.analyses.get, analysis_id)
            node = next(n for n in record["nodes"] if n["node_id"] == name)
            if node["status"] == "starting":
                participants = await asyncio.to_thread(self._participants, record)
                task = _task(record, name, participants)
                self._send(name, network_pb2.ControllerCommand(start_analysis=task))

    # --- helpers --------------------------------------------------------------------------

    def _track(self, record: Record) -> None:
        analysis_id = record["id"]
        self._running[analysis_id] = tuple(node["node_id"] for node in record["nodes"])
        timeout = float(record.get("timeout_seconds") or 0)
        if timeout > 0:
            created = datetime.fromisoformat(record["created_at"])
            left = timeout - (datetime.now(timezone.utc) - created).total_seconds()
            self._timeouts[analysis_id] = asyncio.ensure_future(self._timeout(analysis_id, left))

    def _store_logs(self, update: mpb.AnalysisUpdate) -> None:
        for entry in update.logs:
            logged_at = entry.created_at.ToJsonString() if entry.HasField("created_at") else ""
            self.store.analysis_logs.add(
                analysis_id=update.analysis_id,
                node_id=update.node_id,
                log_type=entry.log_type or "normal",
                message=entry.message,
                logged_at=logged_at,
            )

    def _clients(self, names: Sequence[str]) -> dict[str, bytes]:
        """Each node's public key; NotFound for a client the controller never saw."""
        keys = {}
        for name in names:
            record = self.store.clients.get_by_name(name)
            keys[name] = _key_bytes(record)
        return keys

    def _participants(self, record: Record) -> list[mpb.Participant]:
        names = [node["node_id"] for node in record["nodes"]]
        keys = self._clients(names)
        return [
            mpb.Participant(node_id=n, role=_role(n, record["aggregator"]), public_key=keys[n])
            for n in names
        ]

    def _resolve_package(self, package_id: str, entrypoint: str) -> Record | None:
        """The package record an analysis runs (None without one), "active" resolved now so
        the analysis keeps its code if another package is made active later. NotFound for an
        unknown id or no active package; InvalidArgument when the entry point is not one of
        its module:function entry points."""
        if not package_id:
            return None
        if package_id == "active":
            record = packages.get_active(self.store)
        else:
            record = packages.get(self.store, package_id)
        label = f"{record.get('name') or 'package'} ({record['id']})"
        check_analysis_entry(record.get("entry_points") or {}, entrypoint, package=label)
        return record

    def _online(self, name: str) -> bool:
        return self.registry.link_of_client(name) is not None

    def _send(self, name: str, command: network_pb2.ControllerCommand) -> None:
        link = self.registry.link_of_client(name)
        if link is not None:  # offline: the grace timer or a reconnect takes over
            link.send(command)


def _check_request(
    nodes: Sequence[str], aggregator: str, entrypoint: str, package_id: str, timeout: float
) -> list[str]:
    names = list(dict.fromkeys(nodes))
    if not names:
        raise InvalidArgument("an analysis needs at least one node")
    if len(names) != len(nodes):
        raise InvalidArgument("a node is listed twice")
    if aggregator not in names:
        raise InvalidArgument(f"the aggregator {aggregator!r} must be one of the nodes")
    if not package_id and (":" not in entrypoint or entrypoint.startswith(":")):
        raise InvalidArgument("without a package, entrypoint must be 'module:function'")
    if timeout < 0:
        raise InvalidArgument("timeout_seconds must be >= 0 (0 = no limit)")
    return names


def _role(name: str, aggregator: str) -> str:
    return "aggregator" if name == aggregator else "default"


def _key_bytes(client: Record) -> bytes:
    encoded = client.get("public_key") or ""
    return base64.b64decode(encoded) if encoded else b""


def _task(record: Record, name: str, participants: list[mpb.Participant]) -> mpb.AnalysisTask:
    return mpb.AnalysisTask(
        analysis_id=record["id"],
        project_id=record["project_id"],
        node_id=name,
        role=_role(name, record["aggregator"]),
        entrypoint=record["entrypoint"],
        package_id=record.get("package_id") or "",
        package_sha256=record.get("package_sha256") or "",
        participants=participants,
        settings=dict_to_struct(record.get("settings") or {}),
        timeout=float(record.get("timeout_seconds") or 0),
    )
