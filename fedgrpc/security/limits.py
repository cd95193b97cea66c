"""Input limits servicers apply to what peers send: names, ids and metadata sizes.

Names and ids end up in file names, statestore keys, log lines and token subjects, so they are
held to a small safe alphabet: no slashes (no path escapes), no whitespace or control
characters (no log forging), no leading dot (no hidden files, no ``..``).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from fedgrpc.errors import InvalidArgument, ResourceExhausted

MAX_NAME_LENGTH = 128
# 64 KiB of serialized metadata is plenty for labels and settings and keeps a record small.
DEFAULT_METADATA_LIMIT = 64 * 1024

_NAME = re.compile(rf"[A-Za-z0-9_@:-][A-Za-z0-9._@:-]{{0,{MAX_NAME_LENGTH - 1}}}")
_RULE = f"1-{MAX_NAME_LENGTH} characters from A-Z a-z 0-9 . _ @ : - and must not start with a dot"


def validate_name(value: object, field: str = "name") -> str:
    """Return ``value`` when it is a valid name; raise InvalidArgument naming ``field``."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}: expected a string, got {type(value).__name__}")
    if not _NAME.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidArgument(f"{field}: {shown!r} is not valid; it must be {_RULE}")
    return value


def validate_id(value: object, field: str = "id") -> str:
    """Ids follow the same rules as names (they are used the same ways)."""
    return validate_name(value, field)


def validate_metadata_size(
    message: Message, field: str = "metadata", limit: int = DEFAULT_METADATA_LIMIT
) -> None:
    """Refuse a Struct (or any message) whose serialized size exceeds ``limit`` bytes."""
    size = message.ByteSize()
    if size > limit:
        raise ResourceExhausted(f"{field}: {size} bytes serialized, the limit is {limit}")


# Request fields that hold names or ids (checked by :func:`validate_fields`); free text such
# as messages, descriptions, addresses and checksums is not among them.
_NAME_FIELDS = frozenset(
    {
        "id",
        "name",
        "subject",
        "scope",
        "role",
        "status",
        "aggregator",
        "helper",
        "event_type",
        "log_level",
        "sort_key",
        "preferred_combiner",
        "round_failure_policy",
        "file_name",
        "tags",
    }
)
_NAME_SUFFIXES = ("_id", "_name", "_role")


# Display names people choose (a session's "name", FEDn-style "my session"): labels, not
# identifiers. They may hold spaces but no control characters (no log forging).
_LABEL_FIELDS = frozenset(
    {
        "fedgrpc.control.v1.StartSessionRequest.name",
        "fedgrpc.control.v1.ListPackagesRequest.name",
    }
)
MAX_LABEL_LENGTH = 256


def _is_name_field(name: str) -> bool:
    return name in _NAME_FIELDS or name.endswith(_NAME_SUFFIXES)


def validate_label(value: str, field: str) -> str:
    """A display name: 1-256 printable characters (spaces allowed)."""
    if not value or len(value) > MAX_LABEL_LENGTH or not value.isprintable():
        raise InvalidArgument(
            f"{field}: must be 1-{MAX_LABEL_LENGTH} printable characters (no control characters)"
        )
    return value


def validate_fields(message: Message, limit: int = DEFAULT_METADATA_LIMIT) -> None:
    """Check every name/id field of a request (non-empty ones; nested messages too) with
    :func:`validate_name`, and every ``google.protobuf.Struct`` with
    :func:`validate_metadata_size`. Raises before anything is read or written."""
    for name, check, shape in _checks(message.DESCRIPTOR):
        value = getattr(message, name)
        if shape == _SHAPE_ONE:
            if not (message.HasField(name) if check >= _CHECK_STRUCT else value):
                continue
            values: Iterable[Any] = (value,)
        else:
            values = value.values() if shape == _SHAPE_MAP else value
        for item in values:
            if check == _CHECK_MESSAGE:
                validate_fields(item, limit)
            elif check == _CHECK_STRUCT:
                validate_metadata_size(item, name, limit)
            elif not item:
                continue
            elif check == _CHECK_LABEL:
                validate_label(item, name)
            else:
                validate_name(item, name)


# What validate_fields checks in a field (the message kinds last) and the field's shape; a
# map's checks apply to its values (its keys are free text).
_CHECK_NAME, _CHECK_LABEL, _CHECK_STRUCT, _CHECK_MESSAGE = range(4)
_SHAPE_ONE, _SHAPE_LIST, _SHAPE_MAP = range(3)


@functools.cache
def _checks(descriptor: Descriptor) -> tuple[tuple[str, int, int], ...]:
    """The fields of a message type that :func:`validate_fields` checks, worked out once per
    type: a combiner checks every message its clients send."""
    checks = []
    for field in descriptor.fields:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            check, shape = _check_of(entry.fields_by_name["value"]), _SHAPE_MAP
            if check is not None and check < _CHECK_STRUCT:
                check = None  # a map's scalar values are free text, as its keys are
        else:
            check, shape = _check_of(field), _SHAPE_LIST if field.is_repeated else _SHAPE_ONE
        if check is not None:
            checks.append((field.name, check, shape))
    return tuple(checks)


def _check_of(field: FieldDescriptor) -> int | None:
    if field.message_type is not None:
        is_struct = field.message_type.full_name == "google.protobuf.Struct"
        return _CHECK_STRUCT if is_struct else _CHECK_MESSAGE
    if field.type != field.TYPE_STRING:
        return None
    if field.full_name in _LABEL_FIELDS:
        return _CHECK_LABEL
    return _CHECK_NAME if _is_name_field(field.name) else None


_S = TypeVar("_S", bound=type)


def validate_requests(servicer: _S) -> _S:
    """Class decorator for a servicer: every method taking one request message (unary or
    server-streaming) checks it with :func:`validate_fields` before it runs. Methods reading a
    request stream check their messages themselves (see the combiner and network servicers)."""
    for name, method in list(vars(servicer).items()):
        if name.startswith("_") or not callable(method):
            continue
        setattr(servicer, name, _validating(method))
    return servicer


def _validating(method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def checked_stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, Message):
                validate_fields(request)
            async for response in method(self, request, context):
                yield response

        return checked_stream

    @functools.wraps(method)
    async def checked(self: Any, request: Any, context: Any) -> Any:
        if isinstance(request, Message):
            validate_fields(request)
        return await method(self, request, context)

    return checked
