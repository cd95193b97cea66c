"""Analysis, object and log records (plain dicts) -> their protobuf messages."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from fedgrpc.controller.records import to_message
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.proto.messaging.v1 import messaging_pb2 as mpb
from fedgrpc.statestore import Record


def timestamp(iso: str | None) -> timestamp_pb2.Timestamp | None:
    if not iso:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(iso)
    return stamp


def analysis_message(record: Record) -> pb.Analysis:
    return to_message({**record, "analysis_id": record["id"]}, pb.Analysis)


def object_message(record: Record) -> mpb.StoredObject:
    return mpb.StoredObject(
        id=record["id"],
        analysis_id=record["analysis_id"],
        project_id=record.get("project_id") or "",
        sender=record["sender"],
        tag=record.get("tag") or "",
        recipients=record.get("recipients") or [],
        content_type=record.get("content_type") or "",
        size=record["size"],
        sha256=record["sha256"],
        created_at=timestamp(record["created_at"]),
        kind=record["kind"],
    )


def log_message(record: Record) -> mpb.LogEntry:
    return mpb.LogEntry(
        node_id=record["node_id"],
        log_type=record["log_type"],
        message=record["message"],
        created_at=timestamp(record.get("logged_at") or record["created_at"]),
    )
