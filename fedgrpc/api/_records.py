"""Response messages -> the plain dicts FEDn's APIClient returns.

``json_format.MessageToDict`` does most of the work; on top of it, 64-bit integers (which JSON
mapping renders as strings) become ints again, and every field of the message is present as a
key in declaration order — an unset message field (e.g. a status event without data) as None —
so code written against FEDn can index records without guarding for missing keys.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
# Well-known types have their own JSON mapping (Struct -> dict, Timestamp -> str): left as is.
_WELL_KNOWN_PACKAGE = "google.protobuf."

Record = dict[str, Any]


class ListResponse(Protocol):
    """A List* response: the total count and one page of records."""

    @property
    def count(self) -> int: ...

    @property
    def result(self) -> Any: ...


def to_dict(message: Message) -> Record:
    """One record as FEDn returns it (see the module docstring)."""
    raw = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    # The upb runtime's descriptor class is a stand-in for the pure-Python one.
    return _restore_message(cast(Descriptor, message.DESCRIPTOR), raw)


def to_list(response: ListResponse) -> Record:
    """FEDn's list shape: ``{"count": total matching, "result": [records of this page]}``."""
    return {"count": int(response.count), "result": [to_dict(r) for r in response.result]}


def _restore_message(descriptor: Descriptor, raw: Record) -> Record:
    restored: Record = {}
    for field in descriptor.fields:
        if field.name in raw:
            restored[field.name] = _restore_field(field, raw[field.name])
        elif field.message_type is not None and not field.is_repeated:
            restored[field.name] = None  # an unset message field
    return restored


def _restore_field(field: FieldDescriptor, value: Any) -> Any:
    message_type = field.message_type
    if message_type is not None and message_type.GetOptions().map_entry:
        value_field = message_type.fields_by_name["value"]
        return {key: _restore_value(value_field, item) for key, item in value.items()}
    if field.is_repeated:
        return [_restore_value(field, item) for item in value]
    return _restore_value(field, value)


def _restore_value(field: FieldDescriptor, value: Any) -> Any:
    if field.type in _INT64_TYPES:
        return int(value)
    message_type = field.message_type
    if message_type is None or message_type.full_name.startswith(_WELL_KNOWN_PACKAGE):
        return value
    return _restore_message(message_type, value)
