"""Name, id and metadata-size validators."""

from __future__ import annotations

import pytest
from google.protobuf.struct_pb2 import Struct

from fedgrpc.errors import InvalidArgument, ResourceExhausted
from fedgrpc.security import validate_id, validate_metadata_size, validate_name


@pytest.mark.parametrize(
    "value", ["a", "site-1", "client_7", "user@org.example", "urn:x:1", "v1.2", "A" * 128]
)
def test_valid_names(value: str) -> None:
    assert validate_name(value) == value
    assert validate_id(value, "session_id") == value


@pytest.mark.parametrize(
    "value", ["", ".hidden", "..", "a/b", "a b", "tab\t", "é", "a\nb", "A" * 129, None, 7]
)
def test_invalid_names_name_the_field(value: object) -> None:
    with pytest.raises(InvalidArgument, match=r"^combiner_name: "):
        validate_name(value, "combiner_name")


def test_metadata_size() -> None:
    small = Struct()
    small.update({"lr": 0.1, "tags": ["a", "b"]})
    validate_metadata_size(small)
    big = Struct()
    big.update({"blob": "x" * 2000})
    with pytest.raises(ResourceExhausted, match=r"^client_settings: \d+ bytes serialized"):
        validate_metadata_size(big, "client_settings", limit=1024)
