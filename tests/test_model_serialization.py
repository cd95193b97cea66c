"""Safetensors model format: exact round trips, list compatibility, and hostile input."""

from __future__ import annotations

import contextlib
import json
import re
import struct

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgrpc.errors import InvalidArgument, MalformedModel, PayloadTooLarge
from fedgrpc.model import (
    dump_model,
    list_to_named,
    load_model,
    load_model_list,
    named_to_list,
)
from fedgrpc.model.serialization import model_specs

ROUND_TRIP_CASES: dict[str, np.ndarray] = {
    "scalar_float32": np.array(3.5, dtype=np.float32),
    "scalar_int64": np.array(-(2**62), dtype=np.int64),
    "empty_2d": np.zeros((0, 3), dtype=np.float32),
    "empty_1d": np.zeros((0,), dtype=np.int64),
    "float16": np.array([[1.5, -2.25], [np.inf, 65504.0]], dtype=np.float16),
    "float64": np.linspace(-1.0, 1.0, 24).reshape(2, 3, 4),
    "float64_nan": np.array([np.nan, -0.0, 1e-308]),
    "int64_extremes": np.array([np.iinfo(np.int64).min, 0, np.iinfo(np.int64).max]),
    "uint8": np.arange(256, dtype=np.uint8).reshape(16, 16),
    "uint64_max": np.array([np.iinfo(np.uint64).max], dtype=np.uint64),
    "bool": np.array([[True, False], [False, True]]),
    "int8": np.array([-128, 127], dtype=np.int8),
    "complex64": np.array([1 + 2j, -3.5j], dtype=np.complex64),
}


def assert_same_array(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected, strict=True)


def valid_model_bytes() -> bytes:
    return dump_model({"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3)})


def crafted(header: object, data: bytes = b"") -> bytes:
    """Safetensors bytes with an arbitrary JSON header, for cases dump_model cannot produce."""
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


@pytest.mark.parametrize("name", sorted(ROUND_TRIP_CASES))
def test_round_trip_keeps_dtype_shape_and_values(name: str) -> None:
    original = ROUND_TRIP_CASES[name]
    loaded = load_model(dump_model({name: original}))
    assert list(loaded) == [name]
    assert_same_array(loaded[name], original)


def test_round_trip_of_many_arrays_at_once() -> None:
    loaded = load_model(dump_model(ROUND_TRIP_CASES))
    assert set(loaded) == set(ROUND_TRIP_CASES)
    for name, original in ROUND_TRIP_CASES.items():
        assert_same_array(loaded[name], original)


def test_loaded_arrays_are_writeable_and_independent() -> None:
    loaded = load_model(dump_model({"a": np.zeros(4), "b": np.zeros(4)}))
    loaded["a"][:] = 7.0
    assert loaded["a"].flags.writeable
    assert loaded["a"].flags.aligned
    np.testing.assert_array_equal(loaded["b"], np.zeros(4))


def test_non_contiguous_arrays_are_written_as_their_elements() -> None:
    # safetensors itself would serialize the raw buffer behind a strided view.
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    views = {"columns": base[:, ::2], "transposed": base.T, "reversed": base[::-1]}
    loaded = load_model(dump_model(views))
    for name, view in views.items():
        assert_same_array(loaded[name], np.ascontiguousarray(view))


def test_big_endian_arrays_load_as_native_with_same_values() -> None:
    big_endian = np.array([1.5, -2.0, 3.25], dtype=">f8")
    loaded = load_model(dump_model({"x": big_endian}))["x"]
    assert loaded.dtype == np.dtype(np.float64)
    np.testing.assert_array_equal(loaded, big_endian)


def test_numpy_scalars_are_accepted_as_0d_arrays() -> None:
    # Typed as arrays only, but a numpy scalar is accepted at runtime.
    loaded = load_model(dump_model({"lr": np.float32(0.25)}))  # type: ignore[dict-item]
    assert_same_array(loaded["lr"], np.array(0.25, dtype=np.float32))


def test_load_accepts_bytearray_and_memoryview() -> None:
    data = valid_model_bytes()
    expected = load_model(data)
    for buffer in (bytearray(data), memoryview(data)):
        loaded = load_model(buffer)
        assert set(loaded) == set(expected)
        for name in expected:
            assert_same_array(loaded[name], expected[name])


def test_empty_model_round_trips() -> None:
    assert load_model(dump_model({})) == {}
    assert load_model_list(dump_model([])) == []


# --- list compatibility ------------------------------------------------------------------------
def test_list_model_round_trip_keeps_numeric_order_beyond_ten_arrays() -> None:
    arrays = [np.full((2,), index, dtype=np.int32) for index in range(12)]
    data = dump_model(arrays)
    assert set(load_model(data)) == {str(index) for index in range(12)}
    loaded = load_model_list(data)
    assert len(loaded) == 12
    for index, array in enumerate(loaded):
        assert_same_array(array, arrays[index])


def test_tuple_is_accepted_as_a_list_model() -> None:
    loaded = load_model_list(dump_model((np.zeros(2), np.ones(3))))
    assert [array.shape for array in loaded] == [(2,), (3,)]


def test_named_and_list_conversions_are_inverse() -> None:
    arrays = [np.arange(index + 1) for index in range(11)]
    named = list_to_named(arrays)
    assert list(named) == [str(index) for index in range(11)]
    back = named_to_list(named)
    assert len(back) == len(arrays)
    assert all(got is original for got, original in zip(back, arrays, strict=True))


@pytest.mark.parametrize(
    "names",
    [["weights", "bias"], ["0", "2"], ["1", "2"], ["00", "1"], ["0", "1", "x"]],
)
def test_load_model_list_rejects_other_names_and_says_which(names: list[str]) -> None:
    data = dump_model({name: np.zeros(1) for name in names})
    with pytest.raises(MalformedModel, match="found") as caught:
        load_model_list(data)
    for name in names:
        assert repr(name) in str(caught.value)


def test_named_to_list_rejects_non_list_names() -> None:
    with pytest.raises(InvalidArgument, match="'bias'"):
        named_to_list({"0": np.zeros(1), "bias": np.zeros(1)})


# --- what dump_model refuses -------------------------------------------------------------------
@pytest.mark.parametrize(
    "array",
    [
        np.array([object()], dtype=object),
        np.array(["text"]),
        np.array([b"raw"]),
        np.array(["2024-01-01"], dtype="datetime64[D]"),
        np.zeros(2, dtype=[("a", "f4")]),
        np.array([1j], dtype=np.complex128),
    ],
    ids=["object", "str", "bytes", "datetime", "structured", "complex128"],
)
def test_dump_refuses_dtypes_a_model_cannot_hold(array: np.ndarray) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(f"dtype {array.dtype}")):
        dump_model({"x": array})


def test_no_pickle_object_arrays_are_refused_not_pickled() -> None:
    with pytest.raises(InvalidArgument, match="dtype object"):
        dump_model([np.array([{"a": 1}], dtype=object)])


@pytest.mark.parametrize("bad_name", [1, None, b"bytes", ("t",)])
def test_dump_refuses_non_str_names(bad_name: object) -> None:
    with pytest.raises(InvalidArgument, match="names must be str"):
        dump_model({bad_name: np.zeros(1)})  # type: ignore[dict-item]


def test_dump_refuses_the_reserved_metadata_name() -> None:
    with pytest.raises(InvalidArgument, match="reserved"):
        dump_model({"__metadata__": np.zeros(1)})


@pytest.mark.parametrize("value", [[1.0, 2.0], 3.0, "0.5"])
def test_dump_refuses_values_that_are_not_numpy_arrays(value: object) -> None:
    with pytest.raises(InvalidArgument, match="not a numpy array"):
        dump_model({"x": value})  # type: ignore[dict-item]


@pytest.mark.parametrize("model", ["0123", b"\x00\x01", np.zeros((2, 2)), 42])
def test_dump_refuses_things_that_are_not_models(model: object) -> None:
    with pytest.raises(InvalidArgument, match="not"):
        dump_model(model)  # type: ignore[arg-type]


# --- malformed input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"\x00" * 8, b"\xff" * 8 + b"{}", b"PK\x03\x04 not a model at all"],
    ids=["empty", "short", "zero-header", "huge-header-length", "zip-magic"],
)
def test_garbage_bytes_are_malformed(data: bytes) -> None:
    with pytest.raises(MalformedModel, match="not a valid safetensors model"):
        load_model(data)


@pytest.mark.parametrize("keep", [1, 8, 20, -1, -4])
def test_truncated_model_is_malformed(keep: int) -> None:
    data = valid_model_bytes()
    with pytest.raises(MalformedModel):
        load_model(data[:keep])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (crafted({"a": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, b"\0\0"), "BF16"),
        (crafted({"a": {"dtype": "U8", "shape": [1] * 70, "data_offsets": [0, 1]}}, b"\0"), "64"),
        (crafted({"a": {"dtype": "F32", "shape": [0, 2**62], "data_offsets": [0, 0]}}), "big"),
        (
            crafted({"a": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\2\1"),
            "0 and 1",
        ),
        (crafted({"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 2]}}, b"\0\0"), "valid"),
        (crafted([1, 2]), "valid"),
    ],
    ids=["bfloat16", "too-many-dims", "too-many-elements", "bool-byte-2", "short-data", "list"],
)
def test_structurally_wrong_headers_are_malformed(data: bytes, message: str) -> None:
    with pytest.raises(MalformedModel, match=message):
        load_model(data)


def test_over_max_size_is_payload_too_large_with_both_numbers() -> None:
    data = valid_model_bytes()
    assert load_model(data, max_size=len(data))
    with pytest.raises(PayloadTooLarge, match=f"{len(data)} bytes.*{len(data) - 1} bytes"):
        load_model(data, max_size=len(data) - 1)
    with pytest.raises(PayloadTooLarge):
        load_model_list(dump_model([np.zeros(10)]), max_size=10)


def test_malformed_model_keeps_the_library_error_text() -> None:
    with pytest.raises(MalformedModel, match="header too small") as caught:
        load_model(b"abc")
    assert caught.value.__cause__ is not None


# --- fuzzing ------------------------------------------------------------------------------------
MODEL_FOR_FUZZING = dump_model(
    {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "step": np.array(7, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 2), dtype=np.float16),
    }
)

corruptions = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(MODEL_FOR_FUZZING) - 1), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, len(MODEL_FOR_FUZZING) - 1), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, len(MODEL_FOR_FUZZING)), st.integers(0, 255)),
)


def corrupt(data: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    mutable = bytearray(data)
    for kind, position, value in steps:
        position = min(position, len(mutable))
        if kind == "flip" and position < len(mutable):
            mutable[position] ^= value
        elif kind == "truncate":
            del mutable[position:]
        elif kind == "insert":
            mutable[position:position] = bytes([value])
    return bytes(mutable)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(corruptions, min_size=1, max_size=4))
def test_corrupted_bytes_raise_malformed_or_load_cleanly(steps: list[tuple[str, int, int]]) -> None:
    data = corrupt(MODEL_FOR_FUZZING, steps)
    try:
        loaded = load_model(data)
    except MalformedModel:
        return
    for array in loaded.values():
        assert isinstance(array, np.ndarray)
        assert array.flags.writeable
        array.sum()  # touching every element must be safe


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_malformed_or_load_cleanly(data: bytes) -> None:
    with contextlib.suppress(MalformedModel):
        load_model(data)


def test_model_specs_reads_the_header_like_a_full_load() -> None:
    arrays: dict[str, np.ndarray] = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "scalar": np.array(2.5, dtype=np.float64),
        "empty": np.zeros((0, 5), dtype=np.int64),
        "flags": np.array([True, False]),
        "half": np.ones(3, dtype=np.float16),
    }
    data = dump_model(arrays)
    specs = model_specs(data)
    loaded = load_model(data)
    assert specs == {name: (a.shape, a.dtype) for name, a in loaded.items()}
    with pytest.raises(MalformedModel):
        model_specs(b"not a model at all")
    with pytest.raises(PayloadTooLarge):
        model_specs(data, max_size=8)


def test_models_of_one_layout_each_load_their_own_values() -> None:
    # The header of a layout is built and parsed once and then remembered: what is shared
    # must be the layout only, never the values.
    first = dump_model({"w": np.zeros(8, np.float32), "b": np.ones(2, np.int64)})
    second = dump_model({"w": np.full(8, 3.0, np.float32), "b": np.full(2, 7, np.int64)})
    assert first[:64] == second[:64]  # the same header
    for data, w, b in [(first, 0.0, 1), (second, 3.0, 7), (first, 0.0, 1)]:
        loaded = load_model(data)
        np.testing.assert_array_equal(loaded["w"], np.full(8, w, np.float32))
        np.testing.assert_array_equal(loaded["b"], np.full(2, b, np.int64))


def test_a_header_too_large_to_remember_is_parsed_every_time() -> None:
    model = {f"layer_{i:05d}.attention.weight": np.full(2, i, np.float32) for i in range(2000)}
    data = dump_model(model)
    assert int.from_bytes(data[:8], "little") > 64 * 1024
    for _ in range(2):
        loaded = load_model(data)
        assert loaded.keys() == model.keys()
        np.testing.assert_array_equal(loaded["layer_01999.attention.weight"], [1999.0, 1999.0])
    assert data == safetensors.numpy.save(model)
