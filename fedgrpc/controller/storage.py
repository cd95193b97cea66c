"""Objects of analyses: global intermediate data and final results, as plain functions.

The bytes go to the model/blob store under ``object-<hex>``; the record (who stored it, for
which analysis, tag, recipients, checksum) goes to the statestore. The controller never looks
inside: data may be sealed for its recipients, and a pickled result is stored as bytes and
never unpickled here. Every call names the calling node; it must be a node of the analysis
(and, when the call carries a verified client token, the token's subject).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from fedgrpc.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from fedgrpc.model.chunking import SHA256, iter_chunks
from fedgrpc.modelstore import ModelStore
from fedgrpc.security.interceptor import current_claims
from fedgrpc.security.limits import validate_id
from fedgrpc.security.tokens import Role
from fedgrpc.statestore import Record, StateStore
from fedgrpc.statestore.analyses import TERMINAL_STATUSES

OBJECT_PREFIX = "object-"
_MAX_TEXT = 256


def participant(store: StateStore, analysis_id: str, node_id: str) -> Record:
    """The analysis, if ``node_id`` (the caller) is one of its nodes."""
    claims = current_claims.get()
    if claims is not None and claims.role == Role.CLIENT and claims.subject != node_id:
        raise PermissionDenied(f"node_id {node_id!r} is not the caller ({claims.subject!r})")
    if not analysis_id:
        raise InvalidArgument("analysis_id is required")
    analysis = store.analyses.get(analysis_id)
    if node_id not in {node["node_id"] for node in analysis["nodes"]}:
        raise PermissionDenied(f"node {node_id!r} is not a node of analysis {analysis_id}")
    return analysis


def put_object(
    store: StateStore,
    blobs: ModelStore,
    *,
    analysis_id: str,
    node_id: str,
    data: bytes,
    tag: str = "",
    content_type: str = "",
    recipients: Sequence[str] = (),
    sha256: str = "",
    object_id: str = "",
) -> Record:
    """Store intermediate data; ``object_id`` is the node's proposed id (sealed data is bound
    to it), or empty for one assigned here. AlreadyExists when the id is taken."""
    if object_id:
        validate_id(object_id, "id")
    analysis = participant(store, analysis_id, node_id)
    _check_running(analysis)
    return _store(
        store,
        blobs,
        analysis,
        node_id,
        "intermediate",
        data,
        sha256,
        tag=tag,
        content_type=content_type,
        recipients=list(recipients),
        object_id=object_id,
    )


def submit_result(
    store: StateStore,
    blobs: ModelStore,
    *,
    analysis_id: str,
    node_id: str,
    data: bytes,
    content_type: str = "",
    sha256: str = "",
) -> Record:
    """The aggregator's final result; the analysis records its id (a later one replaces it)."""
    analysis = participant(store, analysis_id, node_id)
    if node_id != analysis["aggregator"]:
        raise PermissionDenied(f"only the aggregator ({analysis['aggregator']}) submits results")
    _check_running(analysis)
    record = _store(
        store,
        blobs,
        analysis,
        node_id,
        "result",
        data,
        sha256,
        tag="",
        content_type=content_type or "application/octet-stream",
        recipients=[],
    )
    store.analyses.update(analysis_id, result_id=record["id"])
    return record


def get_object(
    store: StateStore, blobs: ModelStore, *, analysis_id: str, node_id: str, object_id: str
) -> tuple[Record, bytes]:
    """Any node of the analysis may read its objects, as often as it likes."""
    participant(store, analysis_id, node_id)
    record = store.objects.collection.find_one({"id": object_id, "analysis_id": analysis_id})
    if record is None:
        raise NotFound(f"object '{object_id}' not found in analysis {analysis_id}")
    return record, blobs.get_bytes(record["blob_id"])


def list_objects(
    store: StateStore, *, analysis_id: str, node_id: str, tag: str = "", sender: str = ""
) -> list[Record]:
    participant(store, analysis_id, node_id)
    filters: dict[str, Any] = {"analysis_id": analysis_id, "kind": "intermediate"}
    if tag:
        filters["tag"] = tag
    if sender:
        filters["sender"] = sender
    return store.objects.list(sort_key="created_at", sort_order="asc", **filters)["result"]


def result_of(store: StateStore, blobs: ModelStore, analysis_id: str) -> tuple[Record, bytes]:
    """The final result of an analysis, for its user (the control API)."""
    analysis = store.analyses.get(analysis_id)
    if not analysis.get("result_id"):
        raise NotFound(f"analysis {analysis_id} has no result (yet); status {analysis['status']}")
    record = store.objects.get(analysis["result_id"])
    return record, blobs.get_bytes(record["blob_id"])


def _check_running(analysis: Record) -> None:
    if analysis["status"] in TERMINAL_STATUSES:
        raise FailedPrecondition(f"analysis {analysis['id']} has ended ({analysis['status']})")


def _store(
    store: StateStore,
    blobs: ModelStore,
    analysis: Record,
    node_id: str,
    kind: str,
    data: bytes,
    sha256: str,
    *,
    tag: str,
    content_type: str,
    recipients: list[str],
    object_id: str = "",
) -> Record:
    if len(tag) > _MAX_TEXT or len(content_type) > _MAX_TEXT:
        raise InvalidArgument(f"tag and content_type are at most {_MAX_TEXT} characters")
    blob_id = f"{OBJECT_PREFIX}{uuid.uuid4().hex}"
    # The store checks the size limit (RESOURCE_EXHAUSTED) and the checksum (DATA_LOSS).
    stored = blobs.put(
        blob_id,
        iter_chunks(data),
        expected_size=len(data),
        expected_digest=sha256 or None,
        algorithm=SHA256,
    )
    try:
        return store.objects.create(
            id=object_id or None,
            analysis_id=analysis["id"],
            project_id=analysis["project_id"],
            sender=node_id,
            kind=kind,
            blob_id=blob_id,
            size=stored.size,
            sha256=stored.digest,
            tag=tag,
            content_type=content_type,
            recipients=recipients,
        )
    except BaseException:
        blobs.delete(blob_id)  # no record, no blob
        raise
