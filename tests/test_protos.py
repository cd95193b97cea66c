"""The protocol tree: generated code is current, relocated correctly, and works over real gRPC."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from fedgrpc.model.chunking import model_digest
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
GEN_SCRIPT = Path("scripts") / "gen_protos.py"
GENERATED = Path("fedgrpc") / "proto"
EDITED_FILE = GENERATED / "model" / "v1" / "model_pb2.py"

# A proto that depends on other areas, so the import rewriting across areas is exercised.
CROSS_AREA_PROTO = """\
syntax = "proto3";
package fedgrpc.probe.v1;
import "fedgrpc/common/v1/common.proto";
import "fedgrpc/model/v1/model.proto";
message ProbeRequest { fedgrpc.common.v1.PageRequest page = 1; }
message ProbeResponse {
  fedgrpc.common.v1.PageInfo info = 1;
  repeated fedgrpc.model.v1.ModelHeader headers = 2;
}
service ProbeService { rpc Probe(ProbeRequest) returns (ProbeResponse); }
"""


def run_generator(*arguments: str, root: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """Run the generator as CI does: a separate process, with this interpreter."""
    return subprocess.run(
        [sys.executable, str(root / GEN_SCRIPT), *arguments, "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The proto sources, the generator and the committed generated code, copied to tmp_path."""
    ignore = shutil.ignore_patterns("__pycache__")
    for part in (Path("protos"), Path("scripts"), GENERATED):
        shutil.copytree(REPO_ROOT / part, tmp_path / part, ignore=ignore)
    return tmp_path


# --- the generator -----------------------------------------------------------------------------


def test_check_passes_on_the_real_tree() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_check_reports_an_edited_generated_file(repo_copy: Path) -> None:
    with (repo_copy / EDITED_FILE).open("a", encoding="utf-8") as generated:
        generated.write("# hand edit\n")

    result = run_generator("--check", root=repo_copy)

    assert result.returncode == 1
    assert EDITED_FILE.as_posix() in result.stdout + result.stderr


def test_check_reports_a_stray_file_and_regeneration_removes_it(repo_copy: Path) -> None:
    stray = GENERATED / "model" / "v1" / "notes.txt"
    (repo_copy / stray).write_text("not generated\n", encoding="utf-8")

    drifted = run_generator("--check", root=repo_copy)
    assert drifted.returncode == 1
    assert stray.as_posix() in drifted.stdout + drifted.stderr

    regenerated = run_generator(root=repo_copy)
    assert regenerated.returncode == 0, regenerated.stderr
    assert not (repo_copy / stray).exists()
    assert run_generator("--check", root=repo_copy).returncode == 0


def test_check_reports_a_missing_file(repo_copy: Path) -> None:
    (repo_copy / EDITED_FILE).unlink()

    result = run_generator("--check", root=repo_copy)

    assert result.returncode == 1
    assert EDITED_FILE.as_posix() in result.stdout + result.stderr


@pytest.fixture
def probe_copy(repo_copy: Path) -> Path:
    """The repo copy with a cross-area proto added and the code regenerated."""
    probe_dir = repo_copy / "protos" / "fedgrpc" / "probe" / "v1"
    probe_dir.mkdir(parents=True)
    (probe_dir / "probe.proto").write_text(CROSS_AREA_PROTO, encoding="utf-8")
    result = run_generator(root=repo_copy)
    assert result.returncode == 0, result.stderr
    return repo_copy


# Any reference to a generated module at its protoc-given (not relocated) location.
UNRELOCATED_REFERENCE = re.compile(
    r"(?<![\w.])fedgrpc\.(common|model|probe)\.v1(\.\w+_pb2|\s+import)"
)


@pytest.mark.parametrize(
    ("name", "expected_imports"),
    [
        ("probe_pb2.py", ["common.v1 import common_pb2", "model.v1 import model_pb2"]),
        ("probe_pb2.pyi", ["common.v1 import common_pb2", "model.v1 import model_pb2"]),
        ("probe_pb2_grpc.py", ["probe.v1 import probe_pb2"]),
        ("probe_pb2_grpc.pyi", ["probe.v1 import probe_pb2"]),
    ],
)
def test_cross_area_imports_point_into_fedgrpc_proto(
    probe_copy: Path, name: str, expected_imports: list[str]
) -> None:
    text = (probe_copy / GENERATED / "probe" / "v1" / name).read_text(encoding="utf-8")

    for expected in expected_imports:
        assert f"from fedgrpc.proto.{expected} as " in text
    assert UNRELOCATED_REFERENCE.search(text) is None


def test_new_area_gets_package_inits(probe_copy: Path) -> None:
    for package in (GENERATED, GENERATED / "probe", GENERATED / "probe" / "v1"):
        init = (probe_copy / package / "__init__.py").read_text(encoding="utf-8")
        assert init == '"""Generated by scripts/gen_protos.py; do not edit."""\n'


def test_cross_area_generated_code_imports_from_its_new_home(probe_copy: Path) -> None:
    # A bare stand-in for the package, so the copy shadows the editable install.
    (probe_copy / "fedgrpc" / "__init__.py").write_text("", encoding="utf-8")
    probe = (
        "import fedgrpc\n"
        f"assert fedgrpc.__file__.startswith({str(probe_copy)!r}), fedgrpc.__file__\n"
        "from fedgrpc.proto.probe.v1 import probe_pb2, probe_pb2_grpc\n"
        "response = probe_pb2.ProbeResponse(headers=[{'model_id': 'm'}])\n"
        "response.info.count = 3\n"
        "parsed = probe_pb2.ProbeResponse.FromString(response.SerializeToString())\n"
        "assert parsed.info.count == 3 and parsed.headers[0].model_id == 'm'\n"
        "assert probe_pb2.ProbeResponse.__module__ == 'fedgrpc.proto.probe.v1.probe_pb2'\n"
        "assert hasattr(probe_pb2_grpc, 'ProbeServiceStub')\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(probe_copy)}

    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=probe_copy,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr


# --- the messages ------------------------------------------------------------------------------


def test_model_chunk_round_trips_header_and_data() -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"num_examples": 100})
    header = model_pb2.ModelHeader(
        model_id="m-1",
        total_size=3,
        chunk_size=2,
        digest=model_digest(b"abc"),
        session_id="s-1",
        round_id="r-1",
        metadata=metadata,
    )
    header_chunk = model_pb2.ModelChunk(header=header)
    data_chunk = model_pb2.ModelChunk(data=b"ab")

    parsed_header = model_pb2.ModelChunk.FromString(header_chunk.SerializeToString())
    parsed_data = model_pb2.ModelChunk.FromString(data_chunk.SerializeToString())

    assert parsed_header.WhichOneof("payload") == "header"
    assert parsed_header.header == header
    assert parsed_header.header.metadata["num_examples"] == 100
    assert parsed_data.WhichOneof("payload") == "data"
    assert parsed_data.data == b"ab"


def test_generated_classes_live_under_fedgrpc_proto() -> None:
    # The wire name keeps the proto package; only the Python location moved.
    assert model_pb2.ModelChunk.__module__ == "fedgrpc.proto.model.v1.model_pb2"
    assert model_pb2.ModelChunk.DESCRIPTOR.full_name == "fedgrpc.model.v1.ModelChunk"


# --- ModelService over real gRPC ----------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 40  # 10 KiB: several chunks at the sizes used below


def split(payload: bytes, chunk_size: int) -> Iterator[bytes]:
    for start in range(0, len(payload), chunk_size):
        yield payload[start : start + chunk_size]


class InMemoryModelService(model_pb2_grpc.ModelServiceServicer):
    """Just enough of a model store to drive both streaming directions."""

    DEFAULT_CHUNK_SIZE = 1024

    def __init__(self) -> None:
        self.models: dict[str, bytes] = {}

    async def Upload(  # noqa: N802 - name fixed by the .proto service
        self,
        request_iterator: AsyncIterator[model_pb2.ModelChunk],
        context: grpc.aio.ServicerContext,
    ) -> model_pb2.UploadResponse:
        first = await anext(request_iterator)
        if first.WhichOneof("payload") != "header":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "stream must start with header")
        received = bytearray()
        async for chunk in request_iterator:
            received += chunk.data
        self.models[first.header.model_id] = bytes(received)
        return model_pb2.UploadResponse(
            model_id=first.header.model_id, size=len(received), digest=model_digest(received)
        )

    async def Download(  # noqa: N802 - name fixed by the .proto service
        self,
        request: model_pb2.DownloadRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[model_pb2.ModelChunk]:
        payload = self.models.get(request.model_id)
        if payload is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_id!r}")
            return
        chunk_size = request.chunk_size or self.DEFAULT_CHUNK_SIZE
        header = model_pb2.ModelHeader(
            model_id=request.model_id,
            total_size=len(payload),
            chunk_size=chunk_size,
            digest=model_digest(payload),
        )
        yield model_pb2.ModelChunk(header=header)
        for piece in split(payload, chunk_size):
            yield model_pb2.ModelChunk(data=piece)


@pytest.fixture
async def model_channel() -> AsyncIterator[grpc.aio.Channel]:
    """An aio channel to an InMemoryModelService on a free loopback port."""
    server = grpc.aio.server()
    model_pb2_grpc.add_ModelServiceServicer_to_server(InMemoryModelService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(grace=None)


async def upload_stream(model_id: str, payload: bytes) -> AsyncIterator[model_pb2.ModelChunk]:
    header = model_pb2.ModelHeader(
        model_id=model_id,
        total_size=len(payload),
        chunk_size=3000,
        digest=model_digest(payload),
    )
    header.metadata.update({"num_examples": 100})
    yield model_pb2.ModelChunk(header=header)
    for piece in split(payload, 3000):
        yield model_pb2.ModelChunk(data=piece)


async def test_upload_then_download_over_grpc(model_channel: grpc.aio.Channel) -> None:
    stub = model_pb2_grpc.ModelServiceStub(model_channel)

    uploaded = await stub.Upload(upload_stream("m-1", PAYLOAD))
    assert uploaded.model_id == "m-1"
    assert uploaded.size == len(PAYLOAD)
    assert uploaded.digest == model_digest(PAYLOAD)

    chunks = [c async for c in stub.Download(model_pb2.DownloadRequest(model_id="m-1"))]
    assert chunks[0].WhichOneof("payload") == "header"
    assert chunks[0].header.total_size == len(PAYLOAD)
    assert all(c.WhichOneof("payload") == "data" for c in chunks[1:])
    assert len(chunks) - 1 == -(-len(PAYLOAD) // InMemoryModelService.DEFAULT_CHUNK_SIZE)
    assert b"".join(c.data for c in chunks[1:]) == PAYLOAD


async def test_download_honours_requested_chunk_size(model_channel: grpc.aio.Channel) -> None:
    stub = model_pb2_grpc.ModelServiceStub(model_channel)
    await stub.Upload(upload_stream("m-2", PAYLOAD))

    request = model_pb2.DownloadRequest(model_id="m-2", chunk_size=4096)
    chunks = [c async for c in stub.Download(request)]

    assert [len(c.data) for c in chunks[1:]] == [4096, 4096, 2048]
    assert chunks[0].header.chunk_size == 4096


async def test_download_of_unknown_model_is_not_found(model_channel: grpc.aio.Channel) -> None:
    stub = model_pb2_grpc.ModelServiceStub(model_channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stub.Download(model_pb2.DownloadRequest(model_id="missing")):
            pass

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
