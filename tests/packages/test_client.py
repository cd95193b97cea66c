"""The client's side: loading entry points from a package, and refusing bad packages."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from click.testing import CliRunner

from fedgrpc.cli import main
from fedgrpc.client.entry import TrainOutput, load_package, start_package
from fedgrpc.errors import DataLoss, FailedPrecondition, InvalidArgument
from fedgrpc.packages.fetch import default_cache_dir, fetch_package
from fedgrpc.quickstart import digits
from tests.packages.conftest import MAX_MESSAGE, RunningController, bad_package_bytes
from tests.packages.tarballs import BAD_PACKAGES, good_tarball

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits-package"

TRAIN_SCRIPT = """
    import json, sys
    from pathlib import Path
    from fedgrpc.model.serialization import dump_model, load_model
    model, settings, out_model, out_meta = map(Path, sys.argv[1:])
    step = json.loads(settings.read_text())["step"]
    arrays = load_model(model.read_bytes())
    out_model.write_bytes(dump_model({name: array + step for name, array in arrays.items()}))
    out_meta.write_text(json.dumps({"num_examples": 7}))
"""
VALIDATE_SCRIPT = """
    import json, sys
    from pathlib import Path
    from fedgrpc.model.serialization import load_model
    arrays = load_model(Path(sys.argv[1]).read_bytes())
    total = float(sum(array.sum() for array in arrays.values()))
    Path(sys.argv[2]).write_text(json.dumps({"total": total}))
"""


@pytest.fixture
def isolated_imports() -> Iterator[None]:
    """Packages put their directory on sys.path and import modules; undo both afterwards."""
    path, modules = list(sys.path), set(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            del sys.modules[name]


def _package(root: Path, manifest: str, **files: str) -> Path:
    root.mkdir(parents=True)
    (root / "fedgrpc.yaml").write_text(textwrap.dedent(manifest))
    for name, text in files.items():
        (root / name.replace("__", ".")).write_text(textwrap.dedent(text))
    return root


def test_command_entry_points_exchange_files(tmp_path: Path) -> None:
    root = _package(
        tmp_path / "pkg",
        "entry_points:\n  train: python train.py\n  validate: python3 validate.py\n",
        train__py=TRAIN_SCRIPT,
        validate__py=VALIDATE_SCRIPT,
    )
    code = load_package(root)
    assert code.train is not None
    assert code.validate is not None
    model, metadata = cast(TrainOutput, code.train([np.zeros(3, np.float32)], {"step": 2}))
    assert metadata == {"num_examples": 7}
    np.testing.assert_array_equal(model["0"], [2, 2, 2])
    assert code.validate([np.ones(4, np.float32)]) == {"total": 4.0}


def test_a_failing_command_fails_with_its_last_stderr_line(tmp_path: Path) -> None:
    root = _package(
        tmp_path / "pkg",
        "entry_points:\n  validate: python check.py\n  train: python quiet.py\n",
        check__py="import sys\nprint('loading', file=sys.stderr)\nsys.exit('no data here')\n",
        quiet__py="pass\n",
    )
    code = load_package(root)
    assert code.validate is not None
    assert code.train is not None
    with pytest.raises(FailedPrecondition, match=r"exited with code 1: no data here$"):
        code.validate([np.zeros(1)])
    with pytest.raises(FailedPrecondition, match=r"did not write the trained model"):
        code.train([np.zeros(1)], {})


@pytest.mark.usefixtures("isolated_imports")
def test_functions_load_from_the_package_and_startup_runs_once(tmp_path: Path) -> None:
    module = f"site_{uuid.uuid4().hex[:8]}"
    root = _package(
        tmp_path / "pkg",
        f"entry_points:\n  startup: {module}:startup\n  train: {module}:train\n",
        **{
            f"{module}__py": """
                from pathlib import Path
                def startup():
                    with open(Path(__file__).with_name("started"), "a") as log:
                        log.write("x")
                def train(model, settings):
                    return model, {"num_examples": 1}
            """
        },
    )
    code = start_package(root)
    assert (root / "started").read_text() == "x"
    assert code.train is not None
    assert code.train([1], {}) == ([1], {"num_examples": 1})
    assert code.validate is None


@pytest.mark.usefixtures("isolated_imports")
def test_a_startup_that_raises_stops_the_client(tmp_path: Path) -> None:
    module = f"site_{uuid.uuid4().hex[:8]}"
    root = _package(
        tmp_path / "pkg",
        f"entry_points:\n  startup: {module}:go\n  train: {module}:go\n",
        **{f"{module}__py": "def go():\n    raise KeyError('DATA_DIR')\n"},
    )
    with pytest.raises(
        FailedPrecondition, match="the package's startup raised KeyError: 'DATA_DIR'"
    ):
        start_package(root)


@pytest.mark.usefixtures("isolated_imports")
def test_a_module_that_resolves_outside_the_package_is_refused(tmp_path: Path) -> None:
    # json is imported already: the package's json.py must not be silently replaced by it.
    root = _package(tmp_path / "pkg", "entry_points:\n  train: json:train\n", json__py="")
    with pytest.raises(InvalidArgument, match=r"module 'json' resolves to .*, not to the package"):
        load_package(root)


def test_load_package_needs_train_or_validate_and_its_files(tmp_path: Path) -> None:
    root = _package(tmp_path / "a", "entry_points:\n  startup: python go.py\n", go__py="")
    with pytest.raises(InvalidArgument, match="needs train or validate"):
        load_package(root)
    root = _package(tmp_path / "b", "entry_points:\n  train: client:train\n")
    with pytest.raises(InvalidArgument, match=re.escape("needs client.py or client/__init__.py")):
        load_package(root)


def test_the_example_predict_command() -> None:
    code = load_package(EXAMPLE)
    assert code.predict is not None
    result = code.predict(digits.initial_model())
    assert len(result["predictions"]) == 360  # the held-out 20% of scikit-learn's 1,797 digits
    assert 0.0 <= result["accuracy"] <= 1.0


# --- refusing what the controller sends -----------------------------------------------------


@pytest.mark.parametrize("kind", ["dot-dot", "symlink-out", "hardlink-out", "fifo", "gzip-bomb"])
async def test_client_refuses_a_planted_bad_package(
    controller: RunningController, tmp_path: Path, kind: str
) -> None:
    package_id = controller.plant_package(bad_package_bytes(kind))
    cache = tmp_path / "cache"
    with pytest.raises(BAD_PACKAGES[kind].error) as refused:
        await fetch_package(
            controller.address,
            cache_dir=cache,
            max_message_size=MAX_MESSAGE,
            token=controller.client_token,
        )
    message = str(refused.value)
    assert message.startswith(f"refused package {package_id} (planted")
    assert BAD_PACKAGES[kind].says in message
    assert not cache.exists() or not any(cache.iterdir())


async def test_client_refuses_a_corrupted_download(
    controller: RunningController, tmp_path: Path
) -> None:
    controller.plant_package(good_tarball(), sha256="0" * 64)  # the bytes changed after upload
    with pytest.raises(DataLoss, match="sha256 mismatch"):
        await fetch_package(
            controller.address,
            cache_dir=tmp_path / "cache",
            max_message_size=MAX_MESSAGE,
            token=controller.client_token,
        )
    assert not (tmp_path / "cache").exists()


async def test_cli_client_refuses_a_bad_package_in_one_line(
    controller: RunningController, tmp_path: Path
) -> None:
    controller.plant_package(bad_package_bytes("dot-dot"))
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "fedgrpc", "client", "start", "--controller", controller.address],
        *["--package-from-controller", "--package-dir", str(tmp_path / "cache")],
        *["--name", "site-1", "--token", controller.client_token],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert b'"ready"' not in stdout  # refused before it ever joined
    errors = [line for line in stderr.decode().splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert "Traceback" not in stderr.decode()
    assert errors[0].startswith("Error: refused package ")
    reason = "'../evil.py' has a '..' component, which could write outside the package"
    assert errors[0].endswith(f"{reason} [INVALID_ARGUMENT]")


def test_the_cache_defaults_to_the_environment_then_the_home_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDGRPC_PACKAGE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("FEDGRPC_PACKAGE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "fedgrpc" / "packages"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--entry", "x", "--package-from-controller"], "at most one of --entry, --package and"),
        (["--entry", "x", "--package", "."], "at most one of --entry, --package and"),
        (["--entry", "x", "--package-dir", "cache"], "--package-dir goes with"),
    ],
)
def test_client_start_takes_at_most_one_source_of_code(args: list[str], says: str) -> None:
    result = CliRunner().invoke(main, ["client", "start", *args])
    assert result.exit_code == 2
    assert says in result.output
