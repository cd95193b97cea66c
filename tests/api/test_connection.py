"""Controller addresses and the dicts records become (no server needed)."""

from __future__ import annotations

import pytest

from fedgrpc import errors
from fedgrpc.api._connection import DEFAULT_PORT, Target, auth_metadata, parse_target
from fedgrpc.api._records import to_dict, to_list
from fedgrpc.proto.control.v1 import control_pb2


@pytest.mark.parametrize(
    ("host", "port", "secure", "expected"),
    [
        ("controller", None, False, Target(host="controller", port=DEFAULT_PORT, secure=False)),
        ("controller", 9000, False, Target(host="controller", port=9000, secure=False)),
        ("controller:9000", None, False, Target(host="controller", port=9000, secure=False)),
        ("controller:9000", 9000, True, Target(host="controller", port=9000, secure=True)),
        ("grpc://10.0.0.1:9000", None, False, Target(host="10.0.0.1", port=9000, secure=False)),
        (
            "grpcs://fl.example.org",
            None,
            False,
            Target(host="fl.example.org", port=DEFAULT_PORT, secure=True),
        ),
        (
            "https://fl.example.org:443/",
            None,
            False,
            Target(host="fl.example.org", port=443, secure=True),
        ),
        ("[::1]:9000", None, False, Target(host="::1", port=9000, secure=False)),
        (" localhost ", None, False, Target(host="localhost", port=DEFAULT_PORT, secure=False)),
    ],
)
def test_parse_target(host: str, port: int | None, secure: bool, expected: Target) -> None:
    assert parse_target(host, port, secure) == expected


def test_ipv6_address_is_bracketed() -> None:
    assert parse_target("[::1]:9000").address == "[::1]:9000"
    assert parse_target("controller").address == f"controller:{DEFAULT_PORT}"


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("ftp://controller", None),
        ("controller:notaport", None),
        ("controller:9000", 9001),
        ("grpc://controller:9000/api/v1", None),
        ("", None),
        ("user@controller:9000", None),
    ],
)
def test_bad_addresses_are_invalid_argument(host: str, port: int | None) -> None:
    with pytest.raises(errors.InvalidArgument, match="controller address"):
        parse_target(host, port)


def test_auth_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDGRPC_AUTH_TOKEN", raising=False)
    assert auth_metadata(None, None) == ()
    assert auth_metadata("t", None) == (("authorization", "Bearer t"),)
    assert auth_metadata("t", "Token") == (("authorization", "Token t"),)
    monkeypatch.setenv("FEDGRPC_AUTH_TOKEN", "from-env")
    assert auth_metadata(None, None) == (("authorization", "Bearer from-env"),)
    assert auth_metadata("explicit", None) == (("authorization", "Bearer explicit"),)


def test_records_keep_every_field_in_order_with_ints_and_none() -> None:
    session = control_pb2.Session(id="s", config=control_pb2.SessionConfig(seed=2**40))
    record = to_dict(session)
    assert list(record) == [f.name for f in control_pb2.Session.DESCRIPTOR.fields]
    assert record["config"]["seed"] == 2**40
    assert record["config"]["aggregator_kwargs"] is None  # unset Struct
    package = to_dict(control_pb2.Package(size=5, entry_points={"train": "client:train"}))
    assert (package["size"], package["entry_points"]) == (5, {"train": "client:train"})
    listed = to_list(control_pb2.ListPackagesResponse(count=7, result=[control_pb2.Package()]))
    assert listed["count"] == 7
    assert listed["result"][0]["size"] == 0
    assert (
        to_dict(
            control_pb2.Round(
                combiners=[
                    control_pb2.RoundCombiner(clients=[control_pb2.RoundClient(upload_bytes=9)])
                ]
            )
        )["combiners"][0]["clients"][0]["upload_bytes"]
        == 9
    )
