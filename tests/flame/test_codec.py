"""Pickle-free encoding of analysis data, the pickle opt-in, and final-result output types."""

from __future__ import annotations

import datetime
import math
import pickle
from typing import Any

import grpc
import numpy as np
import pytest

from fedgrpc.errors import InvalidArgument, status_for
from fedgrpc.flame.codec import (
    CT_BYTES,
    CT_JSON,
    CT_NPY,
    CT_PICKLE,
    CT_TAGGED,
    CT_TEXT,
    MalformedData,
    PickleRefused,
    UnsupportedData,
    decode_data,
    encode_data,
    final_result_bytes,
)


def _roundtrip(value, expected_type: str):
    payload, content_type = encode_data(value)
    assert content_type == expected_type
    return decode_data(payload, content_type)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**70),
        1.5,
        "héllo",
        [],
        {},
        {"a": [1, 2.5, None, {"b": "c"}], "d": {"e": False}},
    ],
)
def test_json_values_roundtrip_as_plain_json(value) -> None:
    assert _roundtrip(value, CT_JSON) == value


def test_plain_json_is_readable_json() -> None:
    payload, _ = encode_data({"mean": 4.5, "n": 3})
    assert payload == b'{"mean":4.5,"n":3}'


def test_numpy_scalars_become_python_scalars() -> None:
    value = {"f": np.float32(1.5), "i": np.int64(7), "b": np.bool_(True), "s": np.str_("x")}
    decoded = _roundtrip(value, CT_JSON)
    assert decoded == {"f": 1.5, "i": 7, "b": True, "s": "x"}
    assert type(decoded["i"]) is int
    assert type(decoded["b"]) is bool


def test_top_level_bytes() -> None:
    assert _roundtrip(b"\x00\xffraw", CT_BYTES) == b"\x00\xffraw"
    assert _roundtrip(bytearray(b"ba"), CT_BYTES) == b"ba"


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.array([1, 2, 3], dtype=np.int8),
        np.array(3.5),
        np.zeros((0, 2)),
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        np.asfortranarray(np.arange(6).reshape(2, 3)),
    ],
)
def test_top_level_arrays(array) -> None:
    decoded = _roundtrip(array, CT_NPY)
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_nested_arrays_bytes_tuples_and_special_values() -> None:
    value: dict[str, Any] = {
        "hist": np.array([1, 5, 2]),
        "edges": [np.linspace(0, 1, 4), b"blob"],
        "pair": (1, "two", (3.0,)),
        "nan": math.nan,
        "inf": [math.inf, -math.inf],
        "ints": {1: "one", 2.5: "x", None: "n", (1, "a"): "t"},
        "__fedgrpc__": "a user key that looks like our tag",
    }
    decoded = _roundtrip(value, CT_TAGGED)
    np.testing.assert_array_equal(decoded["hist"], value["hist"])
    np.testing.assert_array_equal(decoded["edges"][0], value["edges"][0])
    assert decoded["edges"][1] == b"blob"
    assert decoded["pair"] == (1, "two", (3.0,))
    assert math.isnan(decoded["nan"])
    assert decoded["inf"] == [math.inf, -math.inf]
    assert decoded["ints"] == {1: "one", 2.5: "x", None: "n", (1, "a"): "t"}
    assert decoded["__fedgrpc__"] == "a user key that looks like our tag"


def test_tagged_container_carries_buffers_raw_not_base64() -> None:
    array = np.zeros(100_000, dtype=np.uint8)
    payload, content_type = encode_data({"a": array})
    assert content_type == CT_TAGGED
    assert len(payload) < 100_000 + 1_000


@pytest.mark.parametrize(
    "value",
    [
        object(),
        {1, 2},
        datetime.date(2024, 1, 1),
        1 + 2j,
        np.complex128(1 + 1j),
        np.array([object()], dtype=object),
        {"nested": [object()]},
        {frozenset(): 1},
    ],
)
def test_unsupported_values_need_explicit_pickle(value) -> None:
    with pytest.raises(UnsupportedData, match="allow_pickle=True") as info:
        encode_data(value)
    assert "output_type='pickle'" in str(info.value)
    assert status_for(info.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_circular_structure_is_refused() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(UnsupportedData, match="circular"):
        encode_data(loop)


def test_pickle_only_when_allowed() -> None:
    value = {1, 2, 3}
    payload, content_type = encode_data(value, allow_pickle=True)
    assert content_type == CT_PICKLE
    with pytest.raises(PickleRefused):
        decode_data(payload, content_type)
    assert decode_data(payload, content_type, allow_pickle=True) == value
    # Allowing pickle does not make it the format for values that have a safe one.
    assert encode_data({"a": 1}, allow_pickle=True)[1] == CT_JSON


def _container(header: bytes) -> bytes:
    return b"FGDATA1\n" + len(header).to_bytes(4, "big") + header


@pytest.mark.parametrize(
    ("payload", "content_type"),
    [
        (b"{not json", CT_JSON),
        (b"not npy", CT_NPY),
        (b"FGDATA1\n", CT_TAGGED),
        (b"FGDATA1\n\x00\x00\x00\x05{bad}", CT_TAGGED),
        (_container(b'{"value":1,"buffers":[[0,99]]}'), CT_TAGGED),
        (_container(b'{"value":1,"buffers":[[-1,0]]}'), CT_TAGGED),
        (_container(b'{"value":{"__fedgrpc__":"bytes","buf":3},"buffers":[]}'), CT_TAGGED),
        (_container(b'{"value":{"__fedgrpc__":"evil"},"buffers":[]}'), CT_TAGGED),
        (_container(b'{"value":{"__fedgrpc__":"float","value":"1e999"},"buffers":[]}'), CT_TAGGED),
        (_container(b'{"value":{"__fedgrpc__":"dict","items":[[[1],2]]},"buffers":[]}'), CT_TAGGED),
        (_container(b'{"value":1}'), CT_TAGGED),
        (b"anything", "application/x-unknown"),
    ],
)
def test_malformed_payloads(payload: bytes, content_type: str) -> None:
    with pytest.raises(MalformedData):
        decode_data(payload, content_type)


def test_npy_with_pickled_objects_is_refused() -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MalformedData):
        decode_data(buffer.getvalue(), CT_NPY)


def test_final_result_str() -> None:
    assert final_result_bytes("résumé", "str") == ("résumé".encode(), CT_TEXT)
    assert final_result_bytes({"mean": 1.5}, "str") == (b"{'mean': 1.5}", CT_TEXT)
    assert final_result_bytes(42, "str")[0] == b"42"


def test_final_result_bytes() -> None:
    assert final_result_bytes(b"\x01\x02", "bytes") == (b"\x01\x02", CT_BYTES)
    assert final_result_bytes(bytearray(b"x"), "bytes")[0] == b"x"
    with pytest.raises(InvalidArgument, match="bytes-like"):
        final_result_bytes("text", "bytes")


def test_final_result_pickle_and_bad_type() -> None:
    payload, content_type = final_result_bytes({"a": (1, 2)}, "pickle")
    assert content_type == CT_PICKLE
    assert pickle.loads(payload) == {"a": (1, 2)}
    with pytest.raises(InvalidArgument, match="output_type"):
        final_result_bytes(1, "json")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="cannot pickle"):
        final_result_bytes(lambda: 1, "pickle")
