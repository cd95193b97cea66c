"""How node reports change an analysis record: pure functions, no I/O, so the rules are plain.

A node's status only moves forward (starting -> started -> executing -> executed/failed/
stopped), its progress only grows, and a terminal status is final, for a node as for the whole
analysis. The analysis is failed as soon as any node failed (or stopped on its own), executed
when every node executed, and otherwise as far as its least advanced node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedgrpc.statestore import Record, now_iso
from fedgrpc.statestore.analyses import TERMINAL_STATUSES

_RANK = {"starting": 0, "started": 1, "executing": 2, "executed": 3, "failed": 3, "stopped": 3}
NODE_REPORTED = frozenset({"started", "executing", "executed", "failed", "stopped"})


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES


def changed_node(node: Record, status: str, progress: int, message: str) -> Record | None:
    """The node entry after a report, or None when the report changes nothing."""
    updated = dict(node)
    if status and not is_terminal(node["status"]) and _RANK[status] > _RANK[node["status"]]:
        updated["status"] = status
        if message:
            updated["message"] = message
    if progress >= 0 and not is_terminal(node["status"]):
        updated["progress"] = max(int(node["progress"]), min(progress, 100))
    if updated["status"] == "executed":
        updated["progress"] = 100
    if updated == node:
        return None
    updated["updated_at"] = now_iso()
    return updated


def overall(nodes: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """(status, message) of the analysis from its nodes' entries."""
    for node in nodes:
        if node["status"] in ("failed", "stopped"):
            why = f": {node['message']}" if node.get("message") else ""
            return "failed", f"node {node['node_id']} {node['status']}{why}"
    if all(node["status"] == "executed" for node in nodes):
        return "executed", ""
    running = [node["status"] for node in nodes if node["status"] != "executed"]
    return min(running, key=lambda status: _RANK[status]), ""


def apply_report(
    analysis: Record, node_id: str, *, status: str, progress: int, message: str
) -> dict[str, Any] | None:
    """The fields to write after a node report (None: nothing changes).

    An ended analysis still records its nodes' last words, but its own status stays final.
    """
    nodes = [dict(node) for node in analysis["nodes"]]
    index = next((i for i, node in enumerate(nodes) if node["node_id"] == node_id), None)
    if index is None:
        return None
    updated = changed_node(nodes[index], status, progress, message)
    if updated is None:
        return None
    nodes[index] = updated
    fields: dict[str, Any] = {"nodes": nodes}
    if not is_terminal(analysis["status"]):
        new_status, why = overall(nodes)
        if new_status != analysis["status"]:
            fields["status"] = new_status
            if is_terminal(new_status):
                fields.update(message=why, finished_at=now_iso())
    return fields


def ended(analysis: Record, status: str, message: str) -> dict[str, Any] | None:
    """Fields that end a running analysis (stop, timeout); None when it has ended already."""
    if is_terminal(analysis["status"]):
        return None
    return {"status": status, "message": message, "finished_at": now_iso()}
