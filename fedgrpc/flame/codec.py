"""Encoding analysis data (messages, intermediate data, final results) without pickle.

FLAME pickles by default, so reading a peer's data runs whatever that peer put in it. Here the
default formats carry data only:

* ``application/json``          JSON values (dict with str keys, list, str, int, finite float,
                                bool, None), nested; numpy scalars become Python scalars.
* ``application/octet-stream``  a top-level ``bytes``.
* ``application/x-npy``         a top-level numpy array (``np.save(allow_pickle=False)``).
* ``application/vnd.fedgrpc.data.v1``  anything else built from the above plus tuples,
  non-finite floats, dicts with non-str keys, and ``bytes``/arrays inside containers::

      b"FGDATA1\\n" | uint32 big-endian header length | header JSON | buffer bytes

  The header is ``{"value": <tagged JSON>, "buffers": [[offset, length], ...]}``; a tagged node
  is ``{"__fedgrpc__": kind, ...}``. Binary values travel as raw buffers, not base64, because
  messages have a 2 MB limit and base64 would cost a third of it.
* ``application/x-python-pickle``  only when the caller passes ``allow_pickle=True``.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
from typing import Any, Literal

import numpy as np

from fedgrpc.errors import InvalidArgument

__all__ = [
    "CT_BYTES",
    "CT_JSON",
    "CT_NPY",
    "CT_PICKLE",
    "CT_TAGGED",
    "CT_TEXT",
    "MalformedData",
    "PickleRefused",
    "UnsupportedData",
    "decode_data",
    "encode_data",
    "final_result_bytes",
]

CT_JSON = "application/json"
CT_BYTES = "application/octet-stream"
CT_NPY = "application/x-npy"
CT_TAGGED = "application/vnd.fedgrpc.data.v1"
CT_PICKLE = "application/x-python-pickle"
CT_TEXT = "text/plain; charset=utf-8"

_MAGIC = b"FGDATA1\n"
_TAG = "__fedgrpc__"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class UnsupportedData(InvalidArgument):
    """The value has no pickle-free encoding; the message says how to opt into pickle."""


class MalformedData(InvalidArgument):
    """The payload does not decode as its content type says."""


class PickleRefused(InvalidArgument):
    """A pickle payload arrived but the caller did not allow unpickling."""


def _unsupported(value: Any, why: str = "") -> UnsupportedData:
    detail = f" ({why})" if why else ""
    return UnsupportedData(
        f"cannot encode a value of type {type(value).__name__} without pickle{detail}; "
        "supported are JSON values, bytes, numpy arrays and dicts/lists/tuples of them. "
        "To send it anyway pass output_type='pickle' (submit_final_result) or "
        "allow_pickle=True explicitly; the receiver must allow pickle too."
    )


def _npy(array: np.ndarray[Any, Any]) -> bytes:
    if array.dtype.hasobject:
        raise _unsupported(array, "numpy array of Python objects")
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def _load_npy(data: bytes) -> np.ndarray[Any, Any]:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MalformedData(f"not a pickle-free .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise MalformedData("not a .npy array")
    return array


class _Encoder:
    """Turns a value into tagged JSON, collecting binary buffers; notes whether tags were used."""

    def __init__(self) -> None:
        self.buffers: list[bytes] = []
        self.tagged = False

    def _buffer(self, kind: str, data: bytes) -> dict[str, Any]:
        self.tagged = True
        self.buffers.append(data)
        return {_TAG: kind, "buf": len(self.buffers) - 1}

    def encode(self, value: Any) -> Any:
        if isinstance(value, np.generic):
            scalar = value.item()
            if not isinstance(scalar, bool | int | float | str | bytes):
                raise _unsupported(value, f"numpy {value.dtype} scalar")
            value = scalar
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            self.tagged = True
            return {_TAG: "float", "value": repr(value)}
        if isinstance(value, bytes | bytearray | memoryview):
            return self._buffer("bytes", bytes(value))
        if isinstance(value, np.ndarray):
            return self._buffer("ndarray", _npy(value))
        if isinstance(value, list):
            return [self.encode(item) for item in value]
        if isinstance(value, tuple):
            self.tagged = True
            return {_TAG: "tuple", "items": [self.encode(item) for item in value]}
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value) and _TAG not in value:
                return {k: self.encode(v) for k, v in value.items()}
            # Non-str keys would silently become strings in JSON; keep them as pairs instead.
            self.tagged = True
            pairs = []
            for key, item in value.items():
                if not (
                    key is None or isinstance(key, bool | int | float | str | tuple | np.generic)
                ):
                    raise _unsupported(key, "dict key")
                pairs.append([self.encode(key), self.encode(item)])
            return {_TAG: "dict", "items": pairs}
        raise _unsupported(value)


def encode_data(data: Any, *, allow_pickle: bool = False) -> tuple[bytes, str]:
    """``(payload, content_type)`` for ``data``; pickle only as a fallback the caller allowed."""
    try:
        if isinstance(data, bytes | bytearray | memoryview):
            return bytes(data), CT_BYTES
        if isinstance(data, np.ndarray):
            return _npy(data), CT_NPY
        encoder = _Encoder()
        try:
            value = encoder.encode(data)
        except RecursionError:
            raise _unsupported(data, "nested too deeply or circular") from None
        if not encoder.tagged:
            return json.dumps(value, allow_nan=False, separators=(",", ":")).encode(), CT_JSON
        header = json.dumps(
            {"value": value, "buffers": _layout(encoder.buffers)},
            allow_nan=False,
            separators=(",", ":"),
        ).encode()
        return b"".join([_MAGIC, struct.pack(">I", len(header)), header, *encoder.buffers]), (
            CT_TAGGED
        )
    except UnsupportedData:
        if not allow_pickle:
            raise
        try:
            return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL), CT_PICKLE
        except Exception as exc:  # pickling runs arbitrary __reduce__ code
            raise UnsupportedData(f"cannot pickle {type(data).__name__}: {exc}") from None


def _layout(buffers: list[bytes]) -> list[list[int]]:
    offsets, position = [], 0
    for buffer in buffers:
        offsets.append([position, len(buffer)])
        position += len(buffer)
    return offsets


def decode_data(payload: bytes, content_type: str, *, allow_pickle: bool = False) -> Any:
    """The value :func:`encode_data` encoded; MalformedData for bytes that do not fit."""
    payload = bytes(payload)
    if content_type == CT_BYTES:
        return payload
    if content_type == CT_NPY:
        return _load_npy(payload)
    if content_type == CT_JSON:
        try:
            return json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedData(f"payload is not JSON: {exc}") from None
    if content_type == CT_TAGGED:
        return _decode_tagged(payload)
    if content_type == CT_PICKLE:
        if not allow_pickle:
            raise PickleRefused(
                "payload is a pickle; unpickling runs code chosen by the sender, so it is only "
                "done with allow_pickle=True"
            )
        return pickle.loads(payload)
    raise MalformedData(f"unknown content type {content_type!r}")


def _decode_tagged(payload: bytes) -> Any:
    start = len(_MAGIC) + 4
    if payload[: len(_MAGIC)] != _MAGIC or len(payload) < start:
        raise MalformedData("not a fedgrpc data container")
    (length,) = struct.unpack(">I", payload[len(_MAGIC) : start])
    try:
        header = json.loads(payload[start : start + length])
        value, layout = header["value"], header["buffers"]
        body = payload[start + length :]
        buffers = []
        for offset, size in layout:
            if not (isinstance(offset, int) and isinstance(size, int)) or (
                offset < 0 or size < 0 or offset + size > len(body)
            ):
                raise MalformedData("buffer outside the payload")
            buffers.append(body[offset : offset + size])
        return _untag(value, buffers)
    except MalformedData:
        raise
    except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError, RecursionError):
        raise MalformedData("fedgrpc data container has a malformed header") from None


def _untag(value: Any, buffers: list[bytes]) -> Any:
    if isinstance(value, list):
        return [_untag(item, buffers) for item in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(_TAG)
    if kind is None:
        return {k: _untag(v, buffers) for k, v in value.items()}
    if kind == "bytes":
        return buffers[value["buf"]]
    if kind == "ndarray":
        return _load_npy(buffers[value["buf"]])
    if kind == "tuple":
        return tuple(_untag(item, buffers) for item in value["items"])
    if kind == "float":
        return _NON_FINITE[value["value"]]
    if kind == "dict":
        return {_untag(k, buffers): _untag(v, buffers) for k, v in value["items"]}
    raise MalformedData(f"unknown tag {kind!r}")


def final_result_bytes(
    result: Any, output_type: Literal["str", "bytes", "pickle"]
) -> tuple[bytes, str]:
    """The bytes of a final result as FLAME's ``submit_final_result(output_type=...)`` makes."""
    if output_type == "str":
        return (result if isinstance(result, str) else str(result)).encode(), CT_TEXT
    if output_type == "bytes":
        if not isinstance(result, bytes | bytearray | memoryview):
            raise InvalidArgument(
                f"output_type='bytes' needs a bytes-like result, got {type(result).__name__}; "
                "use output_type='str' or encode the result first"
            )
        return bytes(result), CT_BYTES
    if output_type == "pickle":
        # Asked for by name: fedgrpc only stores these bytes and never unpickles them itself.
        try:
            return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL), CT_PICKLE
        except Exception as exc:
            raise InvalidArgument(f"cannot pickle {type(result).__name__}: {exc}") from None
    raise InvalidArgument(f"output_type must be 'str', 'bytes' or 'pickle', not {output_type!r}")
