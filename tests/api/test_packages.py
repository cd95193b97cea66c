"""Compute packages: upload and activate, read back, checksum, client config, download."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import grpc
import pytest

from fedgrpc import errors
from fedgrpc.api import APIClient
from tests.api.conftest import Network

MANIFEST = b"""\
entry_points:
  train: client:train
  validate: client:validate
"""
CLIENT_CODE = b"""\
def train(model, settings):
    return model, {"num_examples": 1}


def validate(model):
    return {"accuracy": 1.0}
"""


pytestmark = pytest.mark.timeout(60)


def write_package(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in (("fedgrpc.yaml", MANIFEST), ("client.py", CLIENT_CODE)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def test_set_active_package_then_read_it_back(api: APIClient, tmp_path: Path) -> None:
    tarball = write_package(tmp_path / "package.tgz")
    sha256 = hashlib.sha256(tarball.read_bytes()).hexdigest()
    before = api.get_packages_count()
    result = api.set_active_package(
        str(tarball), "numpyhelper", name="api-test", description="from the API tests"
    )
    package_id = result["package_id"]
    assert result["success"] is True
    active = api.get_active_package()
    assert api.get_package(package_id) == active
    assert api.get_packages_count() == before + 1
    listed = api.get_packages(n_max=1)

    assert (active["id"], active["name"], active["description"]) == (
        package_id,
        "api-test",
        "from the API tests",
    )
    assert (active["helper"], active["file_name"], active["active"]) == (
        "numpyhelper",
        "package.tgz",
        True,
    )
    assert (active["sha256"], active["size"]) == (sha256, tarball.stat().st_size)
    assert active["entry_points"] == {"train": "client:train", "validate": "client:validate"}
    assert (listed["count"], [p["id"] for p in listed["result"]]) == (before + 1, [package_id])
    assert api.get_package_checksum() == {"checksum": sha256}
    config = api.get_client_config(checksum=True)
    assert (config["package_checksum"], config["package_id"]) == (sha256, package_id)
    assert config["helper"] == "numpyhelper"
    assert api.get_client_config(checksum=False)["package_checksum"] == ""


def test_download_package_round_trips(api: APIClient, tmp_path: Path) -> None:
    tarball = write_package(tmp_path / "package.tar.gz")
    target = tmp_path / "downloaded.tgz"
    api.set_active_package(tarball, "numpyhelper")
    result = api.download_package(str(target))
    assert result["success"] is True
    assert target.read_bytes() == tarball.read_bytes()
    assert api.get_active_package()["name"] == "package.tar.gz"  # the default name


def test_unknown_package_is_not_found(api: APIClient) -> None:
    with pytest.raises(errors.NotFound) as caught:
        api.get_package("no-such-package")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_bad_package_is_invalid_argument(api: APIClient, tmp_path: Path) -> None:
    not_a_package = tmp_path / "empty.tgz"
    with tarfile.open(not_a_package, "w:gz"):
        pass  # no fedgrpc.yaml
    with pytest.raises(errors.InvalidArgument) as caught:
        api.set_active_package(str(not_a_package), "numpyhelper")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_client_config_names_the_controller_as_reached(api: APIClient, network: Network) -> None:
    assert api.get_client_config(checksum=False)["controller"] == network.address
