"""Metadata, metrics and settings travel as protobuf Structs and are read back as plain
values, the way protobuf's own JSON printer reads them, except that a non-finite number (a
diverged model's loss) reads as its proto3 JSON name instead of failing the whole report."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from fedgrpc.transfer import dict_to_struct, struct_to_dict

NESTED: dict[str, Any] = {
    "num_examples": 100,
    "loss": 0.25,
    "negative_zero": -0.0,
    "name": "site-a",
    "done": True,
    "nothing": None,
    "history": [1, "x", None, False, [2, {"deep": "yes"}], []],
    "inner": {"epochs": 3, "empty": {}},
}


def test_values_read_back_as_protobufs_json_printer_reads_them() -> None:
    struct = dict_to_struct(NESTED)
    assert struct_to_dict(struct) == json_format.MessageToDict(struct)
    # Numbers are JSON numbers: floats, also where they were given as ints.
    assert struct_to_dict(struct)["num_examples"] == 100.0
    assert isinstance(struct_to_dict(struct)["inner"]["epochs"], float)


def test_an_unset_value_reads_as_none() -> None:
    struct = struct_pb2.Struct()
    struct.fields["unset"].CopyFrom(struct_pb2.Value())
    assert struct_to_dict(struct) == {"unset": None}


@pytest.mark.parametrize(
    ("number", "name"),
    [(math.nan, "NaN"), (-math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")],
)
def test_a_non_finite_number_reads_as_its_proto3_json_name(number: float, name: str) -> None:
    struct = dict_to_struct({"loss": number, "per_epoch": [0.5, number], "inner": {"x": number}})
    assert struct_to_dict(struct) == {
        "loss": name,
        "per_epoch": [0.5, name],
        "inner": {"x": name},
    }


def test_metadata_that_is_not_json_like_is_refused() -> None:
    with pytest.raises(Exception, match="metadata must be JSON-like"):
        dict_to_struct({"model": object()})
