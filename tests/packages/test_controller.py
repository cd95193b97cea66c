"""The package RPCs over real gRPC against an in-process controller on port 0."""

from __future__ import annotations

import filecmp
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from fedgrpc.errors import NotFound
from fedgrpc.model.chunking import sha256_hex
from fedgrpc.packages import build_package
from fedgrpc.packages.fetch import fetch_package
from fedgrpc.packages.transfer import download_package, package_stream, upload_package
from fedgrpc.proto.control.v1 import control_pb2 as pb
from tests.packages.conftest import (
    MAX_MESSAGE,
    ControllerFactory,
    RunningController,
    bad_package_bytes,
)
from tests.packages.tarballs import BAD_PACKAGES, good_tarball

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits-package"


async def _upload_raw(running: RunningController, messages: list[pb.PackageChunk]) -> pb.Package:
    async def stream() -> AsyncIterator[pb.PackageChunk]:
        for message in messages:
            yield message

    package: pb.Package = await running.control.UploadPackage(stream())
    return package


async def _refused(
    running: RunningController, messages: list[pb.PackageChunk]
) -> grpc.aio.AioRpcError:
    before = await running.package_count()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _upload_raw(running, messages)
    assert await running.package_count() == before  # nothing recorded ...
    assert running.package_blobs() == []  # ... and no blob (or half-written temp file) left
    return refused.value


@pytest.mark.parametrize("kind", BAD_PACKAGES)
async def test_upload_refuses_bad_packages(controller: RunningController, kind: str) -> None:
    expected = BAD_PACKAGES[kind]
    header = pb.PackageHeader(name=kind, file_name=f"{kind}.tar.gz")
    error = await _refused(controller, list(package_stream(bad_package_bytes(kind), header=header)))
    assert error.code() == expected.error("").code
    assert expected.says in (error.details() or "")


@pytest.mark.parametrize(
    ("header", "code", "says"),
    [
        (pb.PackageHeader(sha256="ab" * 32), grpc.StatusCode.DATA_LOSS, "sha256 mismatch"),
        (pb.PackageHeader(file_name="../up.tgz"), grpc.StatusCode.INVALID_ARGUMENT, "bare file"),
        (pb.PackageHeader(name="n" * 200), grpc.StatusCode.INVALID_ARGUMENT, "over 128"),
    ],
)
async def test_upload_refuses_bad_headers(
    controller: RunningController, header: pb.PackageHeader, code: grpc.StatusCode, says: str
) -> None:
    error = await _refused(controller, list(package_stream(good_tarball(), header=header)))
    assert error.code() == code
    assert says in (error.details() or "")


async def test_upload_refuses_malformed_streams(controller: RunningController) -> None:
    data = good_tarball()
    stream = list(package_stream(data, header=pb.PackageHeader()))
    no_sha = pb.PackageChunk(header=pb.PackageHeader(total_size=len(data)))
    for messages, says in [
        (stream[1:], "must start with a header"),
        ([], "stream was empty"),
        ([no_sha, *stream[1:]], "must announce the tarball's sha256"),
        ([stream[0], stream[0], *stream[1:]], "second header"),
        (stream[:1], "stream ended after 0 bytes"),
    ]:
        error = await _refused(controller, messages)
        assert says in (error.details() or ""), error.details()


async def test_upload_over_the_size_limit_is_cut_off(start_controller: ControllerFactory) -> None:
    small = await start_controller(max_model_size=64 << 10)  # packages never exceed the blob cap
    data = build_package(EXAMPLE) + b"\0" * (64 << 10)  # gzip readers ignore trailing zeros
    honest = list(package_stream(data, header=pb.PackageHeader()))
    error = await _refused(small, honest)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the limit of 65536 bytes" in (error.details() or "")
    lying = honest[0].header
    lying.total_size = 100  # under the cap; the data then runs past what was announced
    error = await _refused(small, [pb.PackageChunk(header=lying), *honest[1:]])
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_round_trip_through_the_controller(
    controller: RunningController, tmp_path: Path
) -> None:
    data = build_package(EXAMPLE)
    header = pb.PackageHeader(file_name="digits.tar.gz", description="the quickstart task")
    package = await upload_package(controller.control, data, header=header, chunk_size=1000)
    assert (package.name, package.size, package.sha256) == ("digits", len(data), sha256_hex(data))
    assert package.entry_points["train"] == "client:train"
    assert not package.active
    assert package.helper == "numpyhelper"
    assert len(controller.package_blobs()) == 1  # what the refusal tests count does see blobs
    control = controller.control
    active = await control.SetActivePackage(pb.SetActivePackageRequest(id=package.id))
    assert active.active
    assert active.id == package.id
    assert (await control.GetActivePackage(pb.GetActivePackageRequest())).id == package.id

    directory = await fetch_package(
        controller.address,
        cache_dir=tmp_path / "cache",
        max_message_size=MAX_MESSAGE,
        token=controller.client_token,
    )
    assert directory == tmp_path / "cache" / package.sha256
    comparison = filecmp.dircmp(EXAMPLE, directory, ignore=["__pycache__"])
    assert comparison.left_only == comparison.right_only == comparison.diff_files == []
    assert sorted(comparison.same_files) == sorted(p.name for p in EXAMPLE.iterdir() if p.is_file())
    by_id = await download_package(control, package.id, max_size=1 << 20)
    assert by_id.data == data
    assert by_id.header.package_id == package.id


async def test_records_listing_and_the_active_flag(controller: RunningController) -> None:
    control = controller.control
    with pytest.raises(NotFound, match="no active package"):
        await download_package(control, max_size=1 << 20)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await control.GetActivePackage(pb.GetActivePackageRequest())
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    first = await upload_package(control, good_tarball(), header=pb.PackageHeader(name="alpha"))
    second = await upload_package(control, build_package(EXAMPLE), header=pb.PackageHeader())
    await control.SetActivePackage(pb.SetActivePackageRequest(id=first.id))

    listed = await control.ListPackages(pb.ListPackagesRequest())
    assert listed.count == 2
    assert [p.id for p in listed.result] == [second.id, first.id]
    assert {p.id: p.active for p in listed.result} == {first.id: True, second.id: False}
    only = await control.ListPackages(pb.ListPackagesRequest(name="digits"))
    assert [p.id for p in only.result] == [second.id]
    page = pb.ListPackagesRequest()
    page.page.limit, page.page.skip = 1, 1
    assert [p.id for p in (await control.ListPackages(page)).result] == [first.id]
    assert (await control.GetPackage(pb.GetPackageRequest(id=first.id))).active
    for call, request in [
        (control.GetPackage, pb.GetPackageRequest(id="nope")),
        (control.SetActivePackage, pb.SetActivePackageRequest(id="nope")),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await call(request)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(NotFound):
        await download_package(control, "nope", max_size=1 << 20)


async def test_client_config(controller: RunningController) -> None:
    control = controller.control
    empty = await control.GetClientConfig(pb.GetClientConfigRequest(checksum=True))
    assert (empty.package_checksum, empty.package_id, empty.helper) == ("", "", "numpyhelper")
    assert empty.controller == controller.address  # the bound port, not the configured 0
    header = pb.PackageHeader(helper="kerashelper")
    package = await upload_package(control, good_tarball(), header=header)
    await control.SetActivePackage(pb.SetActivePackageRequest(id=package.id))
    config = await control.GetClientConfig(pb.GetClientConfigRequest(checksum=True))
    assert (config.package_checksum, config.package_id) == (package.sha256, package.id)
    assert config.helper == "kerashelper"
    plain = await control.GetClientConfig(pb.GetClientConfigRequest())
    assert plain.package_checksum == ""
    assert plain.package_id == package.id
