"""Models as named numpy arrays in the safetensors format: pickle-free on the wire and at rest.

A model is a ``dict[str, np.ndarray]``. Frameworks that think in ordered weight lists (FEDn's
helpers, Keras ``get_weights()``) use the names ``"0"``..``"n-1"``; the ``*_list`` helpers convert.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from fedgrpc.errors import InvalidArgument, MalformedModel, PayloadTooLarge
from fedgrpc.model import _format

# The dtypes safetensors can both write and read back into numpy. bfloat16/float8 have no numpy
# dtype, and safetensors refuses everything else (object, str, datetime, float128, complex128).
SUPPORTED_DTYPES: frozenset[np.dtype[np.generic]] = frozenset(
    np.dtype(t)
    for t in (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.complex64,
    )
)

# safetensors keeps free-form metadata under this header key, so no tensor may use it.
_RESERVED_NAME = "__metadata__"
_MAX_NAMES_SHOWN = 20

ModelBytes = bytes | bytearray | memoryview


def dump_model(arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> bytes:
    """Serialize named arrays (or a list, named ``"0"``..``"n-1"``) to safetensors bytes."""
    named = arrays if isinstance(arrays, Mapping) else list_to_named(arrays)
    prepared = {_checked_name(name): _prepared_array(name, array) for name, array in named.items()}
    fast = _format.encode(prepared)  # the same bytes with one copy instead of two
    if fast is not None:
        return fast
    data: bytes = safetensors.numpy.save(prepared)
    return data


def dump_model_shared(
    arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray],
) -> bytes | memoryview:
    """:func:`dump_model`, except that arrays parsed in place from one buffer (``load_model``
    with ``copy=False``) and still laid out as in it come back as a view of that very buffer,
    not a copy.

    The result then aliases the arrays: for a caller that is done with them (a round's mean
    shipped, a client's update trained in place and uploaded), it saves a model-sized copy and
    the memory to hold it.
    """
    named = arrays if isinstance(arrays, Mapping) else list_to_named(arrays)
    if all(isinstance(array, np.ndarray) for array in named.values()):
        shared = _format.encoded_in_place(named)
        if shared is not None:
            return shared
    return dump_model(named)


def load_model(
    data: ModelBytes, *, max_size: int | None = None, copy: bool = True
) -> dict[str, np.ndarray]:
    """Parse safetensors bytes into arrays; MalformedModel for anything invalid.

    By default the arrays are writeable copies. ``copy=False`` returns views into ``data``
    where it can (well-formed files, aligned tensors): no copy of the payload at all, the
    arrays keep ``data`` alive, and they are writeable only if ``data`` is (a ``bytearray``),
    read-only for ``bytes``. The caller must not reuse ``data`` while the arrays live.
    """
    view = memoryview(data)
    size = view.nbytes
    if max_size is not None and size > max_size:
        raise PayloadTooLarge(f"model is {size} bytes, over the limit of {max_size} bytes")
    # Well-formed models are read with one copy per tensor (or none); the library judges
    # everything else.
    fast = _format.decode(view, copy=copy)
    if fast is not None:
        if not copy:
            return {name: _checked_bools(name, array) for name, array in fast.items()}
        return {name: _owned_array(name, array) for name, array in fast.items()}
    # The Rust reader accepts exactly ``bytes``; other buffers cost one copy.
    raw = data if isinstance(data, bytes) else bytes(data)
    try:
        loaded = safetensors.numpy.load(raw)
    except SafetensorError as exc:
        raise MalformedModel(f"not a valid safetensors model ({size} bytes): {exc}") from exc
    except KeyError as exc:
        # The header names a dtype safetensors knows but numpy does not (bfloat16, float8, ...).
        raise MalformedModel(f"model uses unsupported tensor dtype {exc}") from exc
    except ValueError as exc:
        raise MalformedModel(f"model header describes an impossible array: {exc}") from exc
    return {name: _owned_array(name, array) for name, array in loaded.items()}


def model_specs(
    data: ModelBytes, *, max_size: int | None = None
) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Each tensor's shape and dtype, read from the header without copying any tensor data.

    A combiner needs only these of the global model to check updates against it. Anything the
    fast header reader does not accept goes through :func:`load_model`, so malformed bytes
    raise the same errors.
    """
    tensors = None
    if max_size is None or memoryview(data).nbytes <= max_size:
        tensors = _format.parse_header(memoryview(data))
    if tensors is None:
        return {n: (a.shape, a.dtype) for n, a in load_model(data, max_size=max_size).items()}
    return {name: (shape, dtype) for name, dtype, shape in tensors}


def header_specs(
    prefix: ModelBytes, *, total_size: int
) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]] | None:
    """Shapes and dtypes from the first bytes of a model of ``total_size`` bytes (enough of
    them to hold the header: 8 + the length those 8 bytes give); None unless well-formed and
    plain, in which case the caller reads the whole model instead."""
    tensors = _format.parse_header(memoryview(prefix), total_size=total_size)
    if tensors is None:
        return None
    return {name: (shape, dtype) for name, dtype, shape in tensors}


def is_canonical_model(data: ModelBytes) -> bool:
    """Whether ``data`` is exactly what :func:`dump_model` writes for the tensors it holds, so
    a well-formed model can be passed on as it is instead of being decoded and re-encoded."""
    return _format.is_canonical(memoryview(data))


def load_model_list(data: ModelBytes, *, max_size: int | None = None) -> list[np.ndarray]:
    """Parse a list model: names must be exactly ``"0"``..``"n-1"``; returned in that order."""
    named = load_model(data, max_size=max_size)
    try:
        return named_to_list(named)
    except InvalidArgument as exc:
        raise MalformedModel(exc.message) from exc


def named_to_list(named: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Order arrays named ``"0"``..``"n-1"`` numerically (``"10"`` after ``"9"``)."""
    expected = [str(index) for index in range(len(named))]
    if set(named) != set(expected):
        raise InvalidArgument(
            f"a list model needs array names '0'..'{len(named) - 1}', "
            f"found {len(named)} names: {_describe_names(named)}"
        )
    return [named[name] for name in expected]


def list_to_named(arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Name a list of arrays ``"0"``..``"n-1"`` (the FEDn convention)."""
    if not _is_array_list(arrays):
        raise InvalidArgument(
            f"a model is a mapping of name to array or a list of arrays, "
            f"not {type(arrays).__name__}"
        )
    return {str(index): array for index, array in enumerate(arrays)}


def _is_array_list(value: object) -> bool:
    # Only list/tuple: a str, bytes or a single ndarray is also a sequence, but not a model.
    return isinstance(value, (list, tuple))


def _checked_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidArgument(f"array names must be str, got {type(name).__name__}: {name!r}")
    if name == _RESERVED_NAME:
        raise InvalidArgument(f"array name {name!r} is reserved by the safetensors format")
    return name


def _prepared_array(name: str, array: object) -> np.ndarray:
    if not isinstance(array, (np.ndarray, np.generic)):
        raise InvalidArgument(f"array {name!r} is a {type(array).__name__}, not a numpy array")
    prepared = np.asarray(array)
    if not prepared.dtype.isnative:
        prepared = prepared.astype(prepared.dtype.newbyteorder("="))
    if prepared.dtype not in SUPPORTED_DTYPES:
        supported = ", ".join(sorted(str(dtype) for dtype in SUPPORTED_DTYPES))
        raise InvalidArgument(
            f"array {name!r} has dtype {prepared.dtype}, which a model cannot hold "
            f"(supported: {supported})"
        )
    # safetensors reads the raw buffer behind the array's data pointer, so a strided view
    # would be written as the wrong elements, silently.
    if not prepared.flags.c_contiguous:
        prepared = prepared.copy(order="C")
    return prepared


def _checked_bools(name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_ and array.view(np.uint8).max(initial=0) > 1:
        # numpy would accept the bytes, but such "booleans" compare unequal to True.
        raise MalformedModel(f"bool array {name!r} holds bytes other than 0 and 1")
    return array


def _owned_array(name: str, array: np.ndarray) -> np.ndarray:
    _checked_bools(name, array)
    # Depending on the safetensors version the buffer is a read-only bytes object or a private
    # bytearray; copy only when the array could not be written or is misaligned.
    if array.flags.writeable and array.flags.aligned:
        return array
    return array.copy()


def _describe_names(names: Iterable[str]) -> str:
    ordered = sorted(names, key=lambda name: (not name.isdigit(), len(name), name))
    shown = ", ".join(repr(name) for name in ordered[:_MAX_NAMES_SHOWN])
    hidden = len(ordered) - _MAX_NAMES_SHOWN
    return f"{shown}, ... ({hidden} more)" if hidden > 0 else shown
