"""A copy-light codec for the common case of the safetensors format.

``safetensors.numpy`` copies every tensor twice on the way out (``tobytes``, then into the
file) and twice on the way in (into a private ``bytes``, then into a writeable array). For a
100 MB model those copies, and the page faults of their fresh buffers, cost more than the
network. This module writes the same bytes with one copy and reads them with one copy.

It handles only what it can prove the library would treat identically, and answers ``None``
for anything else (an odd header, an unusual name, a big-endian host, ...) so the caller falls
back to the library, which stays the judge of every malformed or unusual input and its error
message. :func:`encode` writes exactly what ``safetensors.numpy.save`` writes: tensors sorted by
descending dtype (the library's enum order), then by name; a compact JSON header padded with
spaces to a multiple of 8 bytes.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

# safetensors' dtype names, in the order of its ``Dtype`` enum (it sorts tensors descending).
_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "I16": np.dtype(np.int16),
    "U16": np.dtype(np.uint16),
    "F16": np.dtype(np.float16),
    "I32": np.dtype(np.int32),
    "U32": np.dtype(np.uint32),
    "F32": np.dtype(np.float32),
    "C64": np.dtype(np.complex64),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "U64": np.dtype(np.uint64),
}
_FROM_NUMPY = {dtype: name for name, dtype in _TO_NUMPY.items()}
_RANK = {name: rank for rank, name in enumerate(_TO_NUMPY)}
_MAX_HEADER = 100_000_000  # the library's own limit
_MAX_DIMS = 32
_U64 = 2**64
_INFO_KEYS = frozenset(("dtype", "shape", "data_offsets"))
_LITTLE_ENDIAN = sys.byteorder == "little"
# Characters JSON escapes, and lone surrogates (which UTF-8 cannot encode).
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\\ud800-\udfff]')


# --- writing -------------------------------------------------------------------------------
def encode(arrays: Mapping[str, np.ndarray]) -> bytes | None:
    """The safetensors bytes of native, C-contiguous ``arrays``; None when not handled here."""
    if not _LITTLE_ENDIAN:
        return None
    entries = []
    for name, array in arrays.items():
        dtype = _FROM_NUMPY.get(array.dtype)
        if dtype is None or not _plain_name(name) or not array.flags.c_contiguous:
            return None
        entries.append((-_RANK[dtype], name.encode("utf-8"), name, dtype, array))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    fields, offset = [], 0
    for _, _, name, dtype, array in entries:
        shape = ",".join(str(size) for size in array.shape)
        end = offset + array.nbytes
        fields.append(
            f'"{name}":{{"dtype":"{dtype}","shape":[{shape}],"data_offsets":[{offset},{end}]}}'
        )
        offset = end
    header = ("{" + ",".join(fields) + "}").encode("utf-8")
    header += b" " * (-len(header) % 8)
    parts: list[Any] = [len(header).to_bytes(8, "little"), header]
    parts += [entry[4].reshape(-1).view(np.uint8) for entry in entries]
    return b"".join(parts)  # the one copy of the tensors' bytes


def _plain_name(name: object) -> bool:
    """A str whose JSON form is just its UTF-8 in quotes (no escapes, no surrogates)."""
    return isinstance(name, str) and _NEEDS_ESCAPE.search(name) is None


# --- reading -------------------------------------------------------------------------------
def decode(data: memoryview) -> dict[str, np.ndarray] | None:
    """Writeable, aligned copies of the tensors in ``data``; None when not handled here."""
    if not _LITTLE_ENDIAN:
        return None
    try:
        data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        parsed = _parse(data)
        if parsed is None:
            return None
        return {
            name: np.frombuffer(data, dtype, count, begin).reshape(shape).copy()
            for name, dtype, count, begin, shape in parsed
        }
    except (ValueError, TypeError, OverflowError):
        return None


_Tensor = tuple[str, np.dtype[Any], int, int, tuple[int, ...]]


def parse_header(data: memoryview) -> list[tuple[str, np.dtype[Any], tuple[int, ...]]] | None:
    """Name, dtype and shape of every tensor, from the header alone; None if not plain."""
    tensors = _parse(data)
    if tensors is None:
        return None
    return [(name, dtype, shape) for name, dtype, _, _, shape in tensors]


def _parse(data: memoryview) -> list[_Tensor] | None:
    size = data.nbytes
    if size < 8:
        return None
    length = int.from_bytes(data[:8], "little")
    if length > _MAX_HEADER or 8 + length > size:
        return None
    header = _header(bytes(data[8 : 8 + length]))
    if header is None:
        return None
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            if not _string_map(info):
                return None
            continue
        checked = _tensor(name, info)
        if checked is None:
            return None
        tensors.append(checked)
    return _laid_out(tensors, start=8 + length, end=size)


def _header(raw: bytes) -> dict[str, Any] | None:
    if not raw.startswith(b"{"):
        return None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs) or not all(_encodable(key) for key in result):
        raise ValueError("duplicate or unencodable key")
    return result


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string_map(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, str) and _encodable(v) for v in value.values()
    )


def _is_u64(value: object) -> bool:
    return type(value) is int and 0 <= value < _U64


def _tensor(name: str, info: object) -> tuple[str, str, int, int, tuple[int, ...]] | None:
    if not isinstance(info, dict) or set(info) != _INFO_KEYS:
        return None
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _TO_NUMPY:
        return None
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(map(_is_u64, shape)):
        return None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_u64, offsets))):
        return None
    count = 1
    for size in shape:  # the library multiplies left to right and refuses any overflow
        count *= size
        if count >= _U64:
            return None
    begin, end = offsets
    if (
        count * _TO_NUMPY[dtype].itemsize >= _U64
        or end - begin != count * _TO_NUMPY[dtype].itemsize
    ):
        return None
    return name, dtype, begin, end, tuple(shape)


def _laid_out(
    tensors: list[tuple[str, str, int, int, tuple[int, ...]]], *, start: int, end: int
) -> list[_Tensor] | None:
    """The tensors in file order, if they tile the data area exactly, as the library demands."""
    tensors.sort(key=lambda tensor: (tensor[2], tensor[3]))
    position = 0
    result: list[_Tensor] = []
    for name, dtype, begin, stop, shape in tensors:
        if begin != position:
            return None
        numpy_dtype = _TO_NUMPY[dtype]
        result.append(
            (name, numpy_dtype, (stop - begin) // numpy_dtype.itemsize, start + begin, shape)
        )
        position = stop
    return result if start + position == end else None
