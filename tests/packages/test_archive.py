"""Package safety without a network: inspection, extraction, building and the manifest."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedgrpc.cli import main
from fedgrpc.errors import DataLoss, InvalidArgument, ResourceExhausted
from fedgrpc.model.chunking import sha256_hex
from fedgrpc.packages import build_package, extract_package, inspect_package, parse_manifest
from tests.packages.conftest import bad_package_bytes
from tests.packages.tarballs import (
    BAD_PACKAGES,
    CLIENT_SOURCE,
    END_OF_ARCHIVE,
    GOOD_MANIFEST,
    good_members,
    good_tarball,
    member,
    tarball,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits-package"


# --- refusals: inspection and the client's extraction ---------------------------------------


@pytest.mark.parametrize("kind", BAD_PACKAGES)
def test_inspect_refuses(kind: str) -> None:
    expected = BAD_PACKAGES[kind]
    with pytest.raises(expected.error) as refused:
        inspect_package(bad_package_bytes(kind))
    assert expected.says in str(refused.value)
    assert "\n" not in str(refused.value)  # one readable line, for the CLI and gRPC statuses


@pytest.mark.parametrize("kind", BAD_PACKAGES)
def test_extraction_refuses_and_leaves_nothing(kind: str, tmp_path: Path) -> None:
    data, expected = bad_package_bytes(kind), BAD_PACKAGES[kind]
    cache = tmp_path / "cache"
    with pytest.raises(expected.error) as refused:
        extract_package(data, cache, expected_sha256=sha256_hex(data))
    assert expected.says in str(refused.value)
    assert not cache.exists() or not any(cache.iterdir())
    assert not (tmp_path / "evil.py").exists()


def test_small_caps_count_every_member_and_byte() -> None:
    data = tarball(good_members(), member("a.bin", b"a" * 600), member("b.bin", b"b" * 600))
    with pytest.raises(ResourceExhausted, match=r"'b\.bin' .* takes the package over 1024 bytes"):
        inspect_package(data, max_extracted_size=1024)
    with pytest.raises(ResourceExhausted, match="more than 3 members"):
        inspect_package(data, max_members=3)
    with pytest.raises(ResourceExhausted, match="over the limit of 100 bytes"):
        inspect_package(data, max_size=100)


def test_a_huge_pax_header_is_cut_off_before_it_is_buffered() -> None:
    # tarfile reads a PAX header whole; the decompressed stream is capped beneath it.
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, 8 << 20
    raw = pax.tobuf(format=tarfile.USTAR_FORMAT) + b"\0" * pax.size
    data = gzip.compress(good_members() + raw + END_OF_ARCHIVE, mtime=0)
    with pytest.raises(ResourceExhausted, match="decompresses to more than"):
        inspect_package(data, max_extracted_size=1 << 20, max_members=10)


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ((member("client.py", CLIENT_SOURCE), member("client.py/x.py")), "inside 'client.py'"),
        ((member("C:/evil.py"),), "absolute path"),
        ((member("sub\\evil.py"),), "backslash"),
        ((member("lib", kind=tarfile.CONTTYPE),), "unsupported type"),
    ],
)
def test_inspect_refuses_odd_names_and_types(members: tuple[bytes, ...], says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        inspect_package(tarball(member("fedgrpc.yaml", GOOD_MANIFEST), *members))


def test_truncated_and_garbage_archives_are_invalid() -> None:
    good = good_tarball()
    for data in (good[: len(good) // 2], good[:2] + b"garbage" * 20):
        with pytest.raises(InvalidArgument, match="not a valid gzipped tar archive"):
            inspect_package(data)


# --- extraction -----------------------------------------------------------------------------


def test_extract_checks_the_checksum_first(tmp_path: Path) -> None:
    with pytest.raises(DataLoss, match="sha256 mismatch"):
        extract_package(good_tarball(), tmp_path, expected_sha256="0" * 64)
    assert not any(tmp_path.iterdir())


def test_extract_is_atomic_and_idempotent_per_sha(tmp_path: Path) -> None:
    data = good_tarball()
    sha = sha256_hex(data)

    def extract() -> Path:
        return extract_package(data, tmp_path, expected_sha256=sha.upper())

    with ThreadPoolExecutor(4) as pool:  # racing extractions of one sha all land on one dir
        results = set(pool.map(lambda _: extract(), range(8)))
    assert results == {tmp_path / sha}
    assert sorted(p.name for p in tmp_path.iterdir()) == [sha]  # no temp dirs left behind
    assert (tmp_path / sha / "client.py").read_bytes() == CLIENT_SOURCE
    (tmp_path / sha / "marker").write_text("kept")
    assert extract() == tmp_path / sha
    assert (tmp_path / sha / "marker").exists()  # reused, not extracted again


# --- building -------------------------------------------------------------------------------


def _source_tree(root: Path) -> Path:
    (root / "lib").mkdir(parents=True)
    (root / "fedgrpc.yaml").write_text("entry_points:\n  train: lib.model:train\n")
    (root / "lib" / "__init__.py").write_text("")
    (root / "lib" / "model.py").write_text("def train(m, s):\n    return m, {'num_examples': 1}\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o700)
    for junk in ("__pycache__/model.cpython-311.pyc", ".git/HEAD", "lib/stale.pyc"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("junk")
    return root


def test_build_is_reproducible_and_skips_junk(tmp_path: Path) -> None:
    root = _source_tree(tmp_path / "pkg")
    first = build_package(root)
    os.utime(root / "run.sh", (1, 1))  # times and owners never reach the tarball
    assert build_package(root) == first
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == sorted(members)
    assert set(members) == {"fedgrpc.yaml", "lib", "lib/__init__.py", "lib/model.py", "run.sh"}
    assert members["run.sh"].mode == 0o755
    assert members["lib/model.py"].mode == 0o644
    assert {(m.mtime, m.uid, m.uname) for m in members.values()} == {(0, 0, "")}


def test_build_refuses_links_and_a_missing_manifest(tmp_path: Path) -> None:
    root = _source_tree(tmp_path / "pkg")
    (root / "secrets").symlink_to("/etc")
    with pytest.raises(InvalidArgument, match="secrets is a symbolic link"):
        build_package(root)
    (root / "secrets").unlink()
    (root / "fedgrpc.yaml").unlink()
    with pytest.raises(InvalidArgument, match=r"has no fedgrpc\.yaml"):
        build_package(root)


def test_package_create_prints_path_size_and_sha(tmp_path: Path) -> None:
    root = _source_tree(tmp_path / "pkg")
    result = CliRunner().invoke(main, ["package", "create", str(root)])
    assert result.exit_code == 0, result.output
    target = tmp_path / "pkg.tar.gz"
    data = target.read_bytes()
    assert result.output.splitlines() == [
        f"package: {target}",
        f"size:    {len(data)} bytes",
        f"sha256:  {sha256_hex(data)}",
    ]
    inside = root / "out.tgz"  # an output inside DIR is never packed into itself
    for _ in range(2):
        assert (
            CliRunner().invoke(main, ["package", "create", str(root), "-o", str(inside)]).exit_code
            == 0
        )
    assert inside.read_bytes() == data


def test_package_create_refuses_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["package", "create", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == f"Error: {tmp_path / 'empty'} has no fedgrpc.yaml [INVALID_ARGUMENT]"
    )


def test_example_package_builds_and_passes_inspection() -> None:
    manifest = inspect_package(build_package(EXAMPLE))
    assert manifest.name == "digits"
    assert manifest.specs() == {
        "startup": "client:startup",
        "train": "client:train",
        "validate": "client:validate",
        "predict": "python predict.py",
    }
    assert manifest.requirements == ("scikit-learn>=1.4",)


# --- the manifest ---------------------------------------------------------------------------


def test_manifest_tells_functions_from_commands() -> None:
    manifest = parse_manifest(
        "entry_points:\n"
        "  train: pkg.mod:train\n"
        "  validate: ./validate.sh --fast\n"
        "  predict: run_predict\n"
        "requirements: [numpy>=1.26]\n"
    )
    train, validate, predict = (manifest.entry_points[n] for n in ("train", "validate", "predict"))
    assert (train.module, train.function, train.is_command) == ("pkg.mod", "train", False)
    assert validate.argv == ("./validate.sh", "--fast")
    assert validate.is_command
    assert predict.argv == ("run_predict",)
    assert train.file_alternatives() == [("pkg/mod.py", "pkg/mod/__init__.py")]
    assert validate.file_alternatives() == [("validate.sh",)]
    assert manifest.name is None
    assert manifest.requirements == ("numpy>=1.26",)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("- a list\n", "must be a mapping"),
        ("entry_points: {}\n", "entry_points must map"),
        ("entry_point:\n  train: a:b\n", "unknown key 'entry_point'"),
        ("entry_points:\n  fit: a:b\n", "unknown entry point 'fit'"),
        ("entry_points:\n  train: 3\n", "must be a non-empty string"),
        ("entry_points:\n  train: python /opt/train.py\n", "outside the package"),
        ("entry_points:\n  train: python ../train.py\n", "outside the package"),
        ("entry_points:\n  train: python 'unclosed\n", "No closing quotation"),
        ("name: ''\nentry_points:\n  train: a:b\n", "name must be text"),
        ("entry_points:\n  train: a:b\nrequirements: numpy\n", "requirements must be a list"),
        ("entry_points: &a [*a]\n", "entry_points must map"),
    ],
)
def test_manifest_refusals(text: str, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        parse_manifest(text)
