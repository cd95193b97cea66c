"""Federated analyses (FLAME): analyses with per-node status, their logs, broker messages and
stored objects (global intermediate data and final results; the bytes live in the model store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fedgrpc.errors import Aborted, InvalidArgument, NotFound

from .base import CollectionSpec, Record, Records, now_iso
from .repositories import Repository, require_count, require_text

# Statuses in the order a node moves through them; the three last are terminal.
ANALYSIS_STATUSES = ("starting", "started", "executing", "executed", "failed", "stopped")
TERMINAL_STATUSES = frozenset({"executed", "failed", "stopped"})
MESSAGE_STATUSES = ("pending", "delivered", "expired")
_CAS_ATTEMPTS = 50


class AnalysisRepository(Repository):
    """One record per analysis; ``nodes`` holds each node's role, status and progress."""

    spec = CollectionSpec(
        name="analyses",
        noun="analysis",
        filter_keys=("project_id", "status", "aggregator"),
        sort_keys=("project_id", "status"),
    )

    def create(
        self,
        *,
        id: str | None = None,
        project_id: str,
        entrypoint: str,
        nodes: Iterable[str],
        aggregator: str,
        **fields: Any,
    ) -> Record:
        """A new analysis, every node ``starting``; a taken ``id`` raises ``AlreadyExists``."""
        require_text(entrypoint, "entrypoint", "analysis")
        require_text(aggregator, "aggregator", "analysis")
        names = list(nodes)
        if not names or aggregator not in names:
            raise InvalidArgument("an analysis needs nodes, the aggregator among them")
        now = now_iso()
        doc = {
            "project_id": project_id,
            "entrypoint": entrypoint,
            "aggregator": aggregator,
            "status": "starting",
            "nodes": [_node(name, aggregator, now) for name in names],
            "result_id": None,
            "message": "",
            "finished_at": None,
            **fields,
        }
        return self._collection.insert(doc, id=id)

    def modify(
        self, analysis_id: str, change: Callable[[Record], Mapping[str, Any] | None]
    ) -> Record:
        """Read, let ``change`` compute new fields (None: no change), write if unchanged since.

        A compare-and-set loop on ``updated_at``, so concurrent writers never lose an update.
        """
        for _ in range(_CAS_ATTEMPTS):
            current = self.get(analysis_id)
            fields = change(current)
            if not fields:
                return current
            try:
                return self.update(
                    analysis_id, expect={"updated_at": current["updated_at"]}, **fields
                )
            except Aborted:
                continue
        raise Aborted(f"analysis '{analysis_id}' kept changing under concurrent writers; retry")


def _node(name: str, aggregator: str, now: str) -> Record:
    role = "aggregator" if name == aggregator else "default"
    return {
        "node_id": name,
        "role": role,
        "status": "starting",
        "progress": 0,
        "message": "",
        "updated_at": now,
    }


class AnalysisLogRepository(Repository):
    """flame_log lines, oldest first by ``created_at``."""

    spec = CollectionSpec(
        name="analysis_logs",
        noun="analysis log line",
        filter_keys=("analysis_id", "node_id", "log_type"),
        sort_keys=("node_id", "log_type"),
    )

    def add(
        self, *, analysis_id: str, node_id: str, log_type: str, message: str, logged_at: str = ""
    ) -> Record:
        require_text(analysis_id, "analysis_id", self.spec.noun)
        require_text(node_id, "node_id", self.spec.noun)
        require_text(log_type, "log_type", self.spec.noun)
        if not isinstance(message, str):
            raise InvalidArgument(f"log message must be a string, got {message!r}")
        doc = {
            "analysis_id": analysis_id,
            "node_id": node_id,
            "log_type": log_type,
            "message": message,
            "logged_at": logged_at or now_iso(),
        }
        return self._collection.insert(doc)

    def for_analysis(self, analysis_id: str, **filters: Any) -> Records:
        found = self.list(
            analysis_id=analysis_id, sort_key="created_at", sort_order="asc", **filters
        )
        return found["result"]


class MessageRepository(Repository):
    """Broker messages; the record id is the sender's message id (kept across its retries)."""

    spec = CollectionSpec(
        name="messages",
        noun="message",
        filter_keys=("analysis_id", "recipient", "sender", "status"),
        sort_keys=("sequence", "status", "expires_at"),
    )

    def add(
        self,
        *,
        message_id: str,
        analysis_id: str,
        sender: str,
        recipient: str,
        sequence: int,
        expires_at: str,
        **fields: Any,
    ) -> Record:
        """A pending message; the same ``message_id`` twice raises ``AlreadyExists``."""
        for name, value in (
            ("analysis_id", analysis_id),
            ("sender", sender),
            ("recipient", recipient),
        ):
            require_text(value, name, self.spec.noun)
        require_count(sequence, "sequence", self.spec.noun)
        doc = {
            "analysis_id": analysis_id,
            "sender": sender,
            "recipient": recipient,
            "sequence": sequence,
            "expires_at": expires_at,
            "status": "pending",
            "attempts": 0,
            "delivered_at": None,
            **fields,
        }
        return self._collection.insert(doc, id=message_id)

    def pending_for(self, recipient: str) -> Records:
        """The recipient's undelivered messages in arrival order (the order they must go in)."""
        found = self.list(
            recipient=recipient, status="pending", sort_key="created_at", sort_order="asc"
        )
        return found["result"]

    def mark(self, message_id: str, status: str, **fields: Any) -> Record | None:
        """Move a pending message to ``status``; None when it is no longer pending (idempotent)."""
        if status not in MESSAGE_STATUSES:
            raise InvalidArgument(f"message status must be one of {MESSAGE_STATUSES}")
        try:
            return self.update(message_id, expect={"status": "pending"}, status=status, **fields)
        except (Aborted, NotFound):
            return None


class ObjectRepository(Repository):
    """Records of stored objects; ``blob_id`` names the bytes in the model/blob store."""

    spec = CollectionSpec(
        name="objects",
        noun="object",
        filter_keys=("analysis_id", "sender", "tag", "kind"),
        sort_keys=("tag", "sender", "kind", "size"),
    )

    def create(
        self,
        *,
        id: str | None = None,
        analysis_id: str,
        sender: str,
        kind: str,
        blob_id: str,
        size: int,
        sha256: str,
        **fields: Any,
    ) -> Record:
        require_text(analysis_id, "analysis_id", self.spec.noun)
        require_text(sender, "sender", self.spec.noun)
        require_text(blob_id, "blob_id", self.spec.noun)
        require_count(size, "size", self.spec.noun)
        if kind not in ("intermediate", "result"):
            raise InvalidArgument(f"object kind must be intermediate or result, got {kind!r}")
        doc = {
            "analysis_id": analysis_id,
            "sender": sender,
            "kind": kind,
            "blob_id": blob_id,
            "size": size,
            "sha256": sha256,
            **fields,
        }
        return self._collection.insert(doc, id=id)
