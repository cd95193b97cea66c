"""Input limits servicers apply to what peers send: names, ids and metadata sizes.

Names and ids end up in file names, statestore keys, log lines and token subjects, so they are
held to a small safe alphabet: no slashes (no path escapes), no whitespace or control
characters (no log forging), no leading dot (no hidden files, no ``..``).
"""

from __future__ import annotations

import re

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
