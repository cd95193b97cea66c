"""Analyses run from a compute package: a real controller, a combiner and real ``Client``s.

examples/flame-mean is built with the package helpers, uploaded and set active through the
control API, and started with ``package_id="active"``. The nodes have no
``analysis_python_path``: the code can only come from the package, which each node downloads
with its own token into ``<data dir>/packages/<sha256>/``. StartAnalysis refuses a package
without the entry point (INVALID_ARGUMENT, before any node starts; also through
``fedgrpc analysis start --package``) and an unknown one (NOT_FOUND).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result

from fedgrpc.cli.root import main
from fedgrpc.client.entry import load_analysis_entry
from fedgrpc.client.host import AnalysisHost
from fedgrpc.config import ClientConfig, ControllerConfig
from fedgrpc.controller.app import Controller
from fedgrpc.errors import InvalidArgument
from fedgrpc.packages import build_package
from fedgrpc.packages.transfer import upload_package
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.proto.messaging.v1 import messaging_pb2
from fedgrpc.transfer import dict_to_struct
from tests.integration.conftest import FAST, LocalNetwork, eventually

pytestmark = pytest.mark.timeout(120)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flame-mean"
TERMINAL = ("executed", "failed", "stopped")
EDGES = [0.0, 25.0, 50.0, 75.0, 100.0]
# Each site's ages; the federated result must equal the computation on all of them pooled.
SITES = {"n1": [12.0, 30.5, 47.0, 99.0], "n2": [25.0, 60.0, 100.0]}
NODES = [*SITES, "agg"]


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[LocalNetwork]:
    config = ControllerConfig(
        port=0, data_dir=tmp_path / "controller", message_retry_seconds=0.3, **FAST
    )
    controller = Controller(config)
    await controller.start()
    local = LocalNetwork(data_dir=tmp_path, controller=controller)
    try:
        await local.add_combiner("c1")
        for name in NODES:
            await local.add_client(
                name, None, data_sources=_sources(tmp_path, name), analysis_stop_grace=1.0
            )
        await controller.writer.flush()  # client records (public keys) are written
        yield local
    finally:
        await local.close()


def _sources(tmp_path: Path, name: str) -> tuple[dict[str, Any], ...]:
    if name not in SITES:
        return ()  # the aggregator holds no data
    directory = tmp_path / "data" / name
    directory.mkdir(parents=True)
    rows = "\n".join(["age", *(str(value) for value in SITES[name])])
    (directory / "cohort.csv").write_text(rows + "\n")
    return ({"id": "cohort", "type": "csv", "path": str(directory)},)


async def upload(network: LocalNetwork, directory: Path, *, active: bool) -> pb.Package:
    data = build_package(directory)
    header = pb.PackageHeader(file_name=f"{directory.name}.tar.gz")
    package = await upload_package(network.control, data, header=header)
    if active:
        await network.control.SetActivePackage(pb.SetActivePackageRequest(id=package.id))
    return package


async def start(network: LocalNetwork, **fields: Any) -> pb.Analysis:
    request = pb.StartAnalysisRequest(nodes=NODES, aggregator="agg", **fields)
    started: pb.Analysis = await network.control.StartAnalysis(request)
    return started


async def ended(network: LocalNetwork, analysis_id: str) -> pb.Analysis:
    async def probe() -> pb.Analysis | None:
        request = pb.GetAnalysisRequest(analysis_id=analysis_id)
        current: pb.Analysis = await network.control.GetAnalysis(request)
        return current if current.status in TERMINAL else None

    result: pb.Analysis = await eventually(probe, timeout=90, what="analysis end")
    return result


async def test_the_active_package_runs_its_analysis_entry_point(
    network: LocalNetwork, tmp_path: Path
) -> None:
    package = await upload(network, EXAMPLE, active=True)
    settings = {"columns": ["age"], "edges": EDGES}
    started = await start(
        network, analysis_id="pkg", package_id="active", settings=dict_to_struct(settings)
    )
    # "active" is resolved once, at start: the analysis keeps this package whatever comes next.
    assert (started.package_id, started.entrypoint) == (package.id, "analysis")

    final = await ended(network, "pkg")
    assert final.status == "executed", final.message
    download = pb.DownloadAnalysisResultRequest(analysis_id="pkg")
    result = json.loads((await network.control.DownloadAnalysisResult(download)).data)
    pooled = [value for values in SITES.values() for value in values]
    assert result["columns"]["age"] == {
        "n": len(pooled),
        "mean": pytest.approx(sum(pooled) / len(pooled), rel=1e-12),
        "counts": [1, 3, 1, 2],  # [0,25) [25,50) [50,75) [75,100], the last bin closed
    }
    for name in NODES:  # each node extracted the package into its own data dir, by sha256
        extracted = tmp_path / "nodes" / name / "packages" / package.sha256
        assert (extracted / "analysis.py").is_file(), name


async def test_bad_packages_are_refused_before_any_node_starts(
    network: LocalNetwork, tmp_path: Path
) -> None:
    no_active = await _refusal(network, package_id="active")
    assert no_active.code() == grpc.StatusCode.NOT_FOUND
    unknown = await _refusal(network, package_id="no-such-package")
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-package" in (unknown.details() or "")

    training_only = tmp_path / "training-only"
    training_only.mkdir()
    (training_only / "client.py").write_text("def train(model, settings):\n    return model, {}\n")
    (training_only / "fedgrpc.yaml").write_text("entry_points:\n  train: client:train\n")
    package = await upload(network, training_only, active=False)
    missing = await _refusal(network, package_id=package.id)
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no entry point 'analysis' (it has: train)" in (missing.details() or "")
    module_function = await _refusal(network, package_id=package.id, entrypoint="client:train")
    assert module_function.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not module:function" in (module_function.details() or "")

    from_cli = await cli(network, "analysis", "start", "--package", package.id)
    assert from_cli.exit_code != 0
    assert "no entry point 'analysis'" in from_cli.output
    nothing = await cli(network, "analysis", "start")
    assert nothing.exit_code == 2  # a usage error: neither ENTRYPOINT nor --package
    assert "give ENTRYPOINT (module:function), or --package" in nothing.output

    listed = await network.control.ListAnalyses(pb.ListAnalysesRequest())
    assert listed.count == 0  # nothing was recorded, so nothing was sent to a node


async def cli(network: LocalNetwork, *args: str) -> Result:
    nodes = [argument for name in NODES for argument in ("--node", name)]
    command = [*args, *nodes, "--aggregator", "agg"]
    command += ["--controller", network.controller.address, "--token", network.admin_token]
    return await asyncio.to_thread(CliRunner().invoke, main, command)


async def _refusal(network: LocalNetwork, **fields: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await start(network, **fields)
    return refused.value


async def test_a_cached_extraction_is_used_without_a_download(tmp_path: Path) -> None:
    # Port 1 on loopback: any download attempt would fail instead of returning the cache.
    config = ClientConfig(controller="127.0.0.1:1", name="n", data_dir=tmp_path / "node")
    host = AnalysisHost(config, "n")
    sha256 = "ab" * 32
    cached = tmp_path / "node" / "packages" / sha256
    cached.mkdir(parents=True)
    task = messaging_pb2.AnalysisTask(package_id="p", package_sha256=sha256)
    assert await host._package_dir(task) == cached


def test_the_node_checks_the_entry_point_again(tmp_path: Path) -> None:
    # The runner's own check (should a task bypass the controller's): one clear line, and
    # nothing of the package imported.
    (tmp_path / "run.sh").write_text("echo hi\n")
    (tmp_path / "fedgrpc.yaml").write_text("entry_points:\n  analysis: sh ./run.sh\n")
    with pytest.raises(InvalidArgument, match=r"entry point 'analysis' \(sh ./run.sh\) is a "):
        load_analysis_entry("", tmp_path)
    with pytest.raises(InvalidArgument, match=r"has no entry point 'stats' \(it has: analysis\)"):
        load_analysis_entry("stats", tmp_path)
