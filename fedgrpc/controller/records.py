"""Statestore records (plain dicts) <-> control API messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from fedgrpc.proto.common.v1 import common_pb2

M = TypeVar("M", bound=Message)


def to_message(record: Mapping[str, Any], message_type: type[M]) -> M:
    """Fill a message from a record, ignoring fields the message does not have."""
    clean = {k: v for k, v in record.items() if v is not None}
    return json_format.ParseDict(clean, message_type(), ignore_unknown_fields=True)


def model_record_digest(record: Mapping[str, Any]) -> str:
    """A model record's BLAKE3 digest, or "" for a record written before model digests were
    BLAKE3 (its "sha256" says nothing about a BLAKE3 digest): the bytes are then hashed where
    they are received, as for a header that names no digest."""
    return str(record.get("digest") or "")


def page_args(page: common_pb2.PageRequest) -> dict[str, Any]:
    """PageRequest -> the statestore's limit/skip/sort arguments (newest first by default)."""
    args: dict[str, Any] = {"limit": page.limit or None, "skip": page.skip}
    if page.sort_key:
        args["sort_key"] = page.sort_key
    args["sort_order"] = "asc" if page.sort_order == common_pb2.SORT_ORDER_ASCENDING else "desc"
    return args


def present_filters(request: Message, names: tuple[str, ...]) -> dict[str, Any]:
    """The optional filter fields the caller actually set."""
    return {name: getattr(request, name) for name in names if request.HasField(name)}
