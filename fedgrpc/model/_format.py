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

import functools
import json
import mmap
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
    if not all(array.flags.c_contiguous for array in arrays.values()):
        return None
    laid_out = _layout(tuple((name, a.dtype, a.shape, a.nbytes) for name, a in arrays.items()))
    if laid_out is None:
        return None
    header, order = laid_out
    parts: list[Any] = [len(header).to_bytes(8, "little"), header]
    parts += [arrays[name].reshape(-1).view(np.uint8) for name in order]
    return b"".join(parts)  # the one copy of the tensors' bytes


def encoded_in_place(arrays: Mapping[str, np.ndarray]) -> memoryview | None:
    """The buffer the arrays already live in, if it is exactly what :func:`encode` would write
    for them (header in front, each array at its offset); None otherwise.

    An accumulator that adopted a received update's arrays and divided them in place holds its
    mean inside that update's file buffer, whose header already describes it: no copy is
    needed to serialize it.
    """
    if not arrays:
        return None
    buffers = {id(_owner(array)) for array in arrays.values()}
    owner = _owner(next(iter(arrays.values())))
    if len(buffers) != 1 or not isinstance(owner, (bytearray, mmap.mmap)):
        return None
    laid_out = _layout(tuple((name, a.dtype, a.shape, a.nbytes) for name, a in arrays.items()))
    if laid_out is None or not all(a.flags.c_contiguous for a in arrays.values()):
        return None
    header, order = laid_out
    view = memoryview(owner)
    start = 8 + len(header)
    if bytes(view[:start]) != len(header).to_bytes(8, "little") + header:
        return None
    base = np.frombuffer(owner, np.uint8).ctypes.data + start
    offset = 0
    for name in order:
        array = arrays[name]
        if array.ctypes.data != base + offset:
            return None
        offset += array.nbytes
    return view if start + offset == len(owner) else None


def _owner(array: np.ndarray) -> object:
    """The object at the bottom of an array's chain of bases (the received buffer for a view
    parsed in place)."""
    base: object = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


_Spec = tuple[str, np.dtype[Any], tuple[int, ...], int]  # name, dtype, shape, nbytes


def _layout(specs: tuple[_Spec, ...]) -> tuple[bytes, tuple[str, ...]] | None:
    """The padded header the library writes for these tensors, and their names in file order.

    Remembered for models of up to ``_CACHED_LAYOUT_TENSORS`` tensors (the last few layouts):
    a session encodes the same layout every round, and for a small model building the header
    costs more than copying the tensors."""
    if len(specs) <= _CACHED_LAYOUT_TENSORS:
        return _layout_cached(specs)
    return _build_layout(specs)


_CACHED_LAYOUT_TENSORS = 1024


def _build_layout(specs: tuple[_Spec, ...]) -> tuple[bytes, tuple[str, ...]] | None:
    if not _LITTLE_ENDIAN:
        return None
    entries = []
    for name, numpy_dtype, shape, nbytes in specs:
        dtype = _FROM_NUMPY.get(numpy_dtype)
        if dtype is None or not _plain_name(name):
            return None
        entries.append((-_RANK[dtype], name.encode("utf-8"), name, dtype, shape, nbytes))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    fields, offset = [], 0
    for _, _, name, dtype, shape, nbytes in entries:
        dims = ",".join(str(size) for size in shape)
        end = offset + nbytes
        fields.append(
            f'"{name}":{{"dtype":"{dtype}","shape":[{dims}],"data_offsets":[{offset},{end}]}}'
        )
        offset = end
    header = ("{" + ",".join(fields) + "}").encode("utf-8")
    header += b" " * (-len(header) % 8)
    return header, tuple(entry[2] for entry in entries)


_layout_cached = functools.lru_cache(maxsize=16)(_build_layout)


def _plain_name(name: object) -> bool:
    """A str whose JSON form is just its UTF-8 in quotes (no escapes, no surrogates)."""
    return isinstance(name, str) and _NEEDS_ESCAPE.search(name) is None


# --- reading -------------------------------------------------------------------------------
def decode(data: memoryview, *, copy: bool = True) -> dict[str, np.ndarray] | None:
    """The tensors in ``data``; None when not handled here.

    With ``copy`` (the default) each tensor is a writeable, aligned copy. Without it each is a
    view into ``data`` (writeable if ``data`` is), and a copy only where a view would be
    misaligned: the caller then owns views that keep the whole buffer alive.
    """
    if not _LITTLE_ENDIAN:
        return None
    try:
        data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        parsed = _parse(data)
        if parsed is None:
            return None
        return {
            name: _tensor_of(np.frombuffer(data, dtype, count, begin).reshape(shape), copy=copy)
            for name, dtype, count, begin, shape in parsed
        }
    except (ValueError, TypeError, OverflowError):
        return None


def _tensor_of(view: np.ndarray, *, copy: bool) -> np.ndarray:
    return view.copy() if copy or not view.flags.aligned else view


def is_canonical(data: memoryview) -> bool:
    """Whether ``data`` is byte for byte what :func:`encode` writes for the tensors it holds
    (no metadata, the library's order, compact header), so it can stand in for a re-encode."""
    data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    parsed = _parse(data)
    if parsed is None:
        return False
    laid_out = _layout(
        tuple(
            (name, dtype, shape, count * dtype.itemsize) for name, dtype, count, _, shape in parsed
        )
    )
    if laid_out is None:
        return False
    header = laid_out[0]
    return data.nbytes >= 8 + len(header) and bytes(data[: 8 + len(header)]) == (
        len(header).to_bytes(8, "little") + header
    )


_Tensor = tuple[str, np.dtype[Any], int, int, tuple[int, ...]]


def parse_header(
    data: memoryview, *, total_size: int | None = None
) -> list[tuple[str, np.dtype[Any], tuple[int, ...]]] | None:
    """Name, dtype and shape of every tensor, from the header alone; None if not plain.

    ``data`` may be just a prefix holding the header when ``total_size`` gives the file's size.
    """
    tensors = _parse(data, total_size)
    if tensors is None:
        return None
    return [(name, dtype, shape) for name, dtype, _, _, shape in tensors]


def _parse(data: memoryview, total_size: int | None = None) -> tuple[_Tensor, ...] | None:
    size = data.nbytes if total_size is None else total_size
    if size < 8 or data.nbytes < 8:
        return None
    length = int.from_bytes(data[:8], "little")
    if length > _MAX_HEADER or 8 + length > size or 8 + length > data.nbytes:
        return None
    raw = bytes(data[8 : 8 + length])
    if length <= _CACHED_HEADER_BYTES:
        return _parse_header_cached(raw, size)
    return _parse_header(raw, size)


# Headers up to this size are remembered (the last few): every round of a session sends the
# same one, and for a small model parsing it costs more than the tensors themselves.
_CACHED_HEADER_BYTES = 64 * 1024


def _parse_header(raw: bytes, size: int) -> tuple[_Tensor, ...] | None:
    """The tensors a header describes, in file order, for a file of ``size`` bytes."""
    header = _header(raw)
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
    return _laid_out(tensors, start=8 + len(raw), end=size)


_parse_header_cached = functools.lru_cache(maxsize=16)(_parse_header)


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
) -> tuple[_Tensor, ...] | None:
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
    return tuple(result) if start + position == end else None
