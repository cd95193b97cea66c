"""scripts/gen_api_client.py: the committed client is current, drift is caught, and the
generated methods mirror the proto (names, fields, comments) and work over real gRPC."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedgrpc import errors
from fedgrpc.api import APIClient, ControlClientBase
from fedgrpc.api._rpc import RpcClient
from fedgrpc.proto.common.v1 import common_pb2
from fedgrpc.proto.control.v1 import control_pb2
from tests.api.conftest import Trained

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "gen_api_client.py"
GENERATED = Path("fedgrpc") / "api" / "_generated.py"
SERVICE = control_pb2.DESCRIPTOR.services_by_name["ControlService"]
EXTRA_RPC = """
  // Probe the generator: this comment must become the docstring.
  rpc ProbeThings(ProbeThingsRequest) returns (ControllerStatus);
}

message ProbeThingsRequest {
  // How many things to probe.
  uint32 how_many = 1;
  optional string label = 2;
}
"""


def run_generator(root: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """As CI runs it: a separate process with this interpreter."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments, "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The protos and the committed generated client, copied: the real tree is never touched."""
    shutil.copytree(REPO_ROOT / "protos", tmp_path / "protos")
    (tmp_path / GENERATED).parent.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / GENERATED, tmp_path / GENERATED)
    return tmp_path


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_check_passes_on_the_tree() -> None:
    result = run_generator(REPO_ROOT, "--check")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_check_fails_naming_the_file_when_it_was_edited(repo_copy: Path) -> None:
    assert run_generator(repo_copy, "--check").returncode == 0
    generated = repo_copy / GENERATED
    generated.write_text(generated.read_text().replace("One session.", "One sesion."))
    result = run_generator(repo_copy, "--check")
    assert result.returncode == 1
    assert str(GENERATED) in result.stderr
    generated.unlink()
    missing = run_generator(repo_copy, "--check")
    assert (missing.returncode, str(GENERATED) in missing.stderr) == (1, True)


def test_generation_is_deterministic_and_follows_the_proto(repo_copy: Path) -> None:
    assert run_generator(repo_copy).returncode == 0
    assert (repo_copy / GENERATED).read_bytes() == (REPO_ROOT / GENERATED).read_bytes()

    proto = repo_copy / "protos" / "fedgrpc" / "control" / "v1" / "control.proto"
    text = proto.read_text()
    service_end = text.index("\n}\n", text.index("service ControlService"))
    proto.write_text(text[:service_end] + EXTRA_RPC + text[service_end + 3 :])
    assert run_generator(repo_copy, "--check").returncode == 1
    assert run_generator(repo_copy).returncode == 0

    source = (repo_copy / GENERATED).read_text()
    method = source[source.index("    def probe_things(") :]  # the last RPC, the last method
    assert "how_many: int = 0," in method
    assert "label: str | None = None," in method
    assert '"""Probe the generator: this comment must become the docstring.' in method
    assert "how_many: How many things to probe." in method
    assert "control_pb2.ProbeThingsRequest(" in method


def test_generated_file_is_lint_and_format_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [ruff, *command, str(GENERATED)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_one_method_per_rpc_with_the_request_fields_as_keywords() -> None:
    own = {n for n, v in vars(ControlClientBase).items() if inspect.isfunction(v)} - {"__init__"}
    assert own == {snake_case(m.name) for m in SERVICE.methods}
    for rpc in SERVICE.methods:
        signature = inspect.signature(getattr(ControlClientBase, snake_case(rpc.name)))
        keywords = [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]
        fields = [] if rpc.client_streaming else [f.name for f in rpc.input_type.fields]
        assert keywords == [*fields, "timeout", "metadata"], rpc.name
        assert getattr(ControlClientBase, snake_case(rpc.name)).__doc__, rpc.name
    assert issubclass(ControlClientBase, RpcClient)


def test_docstrings_come_from_the_proto_comments() -> None:
    assert ControlClientBase.get_session.__doc__.startswith("One session.")  # type: ignore[union-attr]
    start_doc = ControlClientBase.start_session.__doc__ or ""
    assert start_doc.startswith("Start a training session. FAILED_PRECONDITION when")
    assert "id: Session id; generated when empty." in start_doc
    assert "Raises:\n" in start_doc


def test_generated_calls_over_grpc(api: APIClient, trained: Trained) -> None:
    control = api.control
    oldest_first = {"limit": 1, "sort_order": "SORT_ORDER_ASCENDING"}
    by_dict = control.list_sessions(page=oldest_first)
    by_message = control.list_sessions(
        page=common_pb2.PageRequest(limit=1, sort_order=common_pb2.SORT_ORDER_ASCENDING),
        timeout=10,
        metadata=[("x-request-id", "1")],
    )
    assert by_dict == by_message
    assert isinstance(by_dict, control_pb2.ListSessionsResponse)
    assert by_dict.count >= 1
    assert control.get_session(id=trained.session_id).status == "finished"
    finished = control.list_sessions(status="finished").result
    assert {s.status for s in finished} == {"finished"}
    with pytest.raises(errors.InvalidArgument):
        control.list_sessions(page={"no_such_field": 1})


def test_streaming_rpcs_are_iterators_with_typed_errors(api: APIClient) -> None:
    with pytest.raises(errors.NotFound):
        list(api.control.download_package(id="no-such-package"))
    with pytest.raises(errors.InvalidArgument):
        api.control.upload_package(iter([control_pb2.PackageChunk(data=b"no header")]))
