"""Protobuf wire format by hand, for the few messages we encode without copying a model twice.

Only what the hot paths need: varints and length-delimited fields. Everything else goes
through protobuf; tests check each hand-built message against protobuf's own parser.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

from fedgrpc.model.chunking import Buffer

_LENGTH_DELIMITED = 2
_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))


def varint(value: int) -> bytes:
    """``value`` (non-negative) as a base-128 varint."""
    if value < 0x80:  # field keys and short lengths: most calls, answered from a table
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(raw: bytes, position: int) -> tuple[int, int]:
    """(value, next position), or (-1, 0) when malformed or longer than 10 bytes."""
    value = shift = 0
    for index in range(position, min(position + 10, len(raw))):
        byte = raw[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    return -1, 0


def field_prefix(number: int, length: int) -> bytes:
    """The key and length that precede a length-delimited field (bytes, string, message)."""
    return varint(number << 3 | _LENGTH_DELIMITED) + varint(length)


def encode_in_submessage(
    message: Message, field: str, additions: Sequence[tuple[str, Buffer]]
) -> bytes:
    """``message`` serialized as if each (name, value) of ``additions`` were set on its
    submessage ``field``: each value is copied once, straight into the result.

    ``field`` must be the only field set on ``message`` (as in a oneof-only wrapper), and the
    added fields length-delimited (bytes or string) and unset on the submessage.
    """
    if [descriptor.name for descriptor, _ in message.ListFields()] != [field]:
        raise ValueError(f"{field} must be the only field set on the outer message")
    parts = with_fields(getattr(message, field), additions)
    size = sum(memoryview(part).nbytes for part in parts)
    outer = field_prefix(message.DESCRIPTOR.fields_by_name[field].number, size)
    return b"".join((outer, *parts))


def with_fields(message: Message, additions: Sequence[tuple[str, Buffer]]) -> list[Buffer]:
    """The pieces of ``message`` serialized as if each (name, value) of ``additions`` were set
    on it (length-delimited fields, unset on ``message``), for the caller to join."""
    numbers = message.DESCRIPTOR.fields_by_name
    parts: list[Buffer] = [message.SerializeToString()]
    for name, value in additions:
        parts += [field_prefix(numbers[name].number, memoryview(value).nbytes), value]
    return parts
