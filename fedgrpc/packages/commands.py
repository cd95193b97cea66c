"""Command entry points: how a package's commands receive a model and hand results back.

A command is split as a POSIX shell would split it (``shlex``) and run without a shell, in the
package directory, with ``FEDGRPC_PACKAGE_DIR`` set to it. A leading ``python`` or ``python3``
is replaced by the client's own interpreter, so the package runs in the client's environment.
Inputs and outputs are files in a fresh temporary directory (removed afterwards), passed as
extra arguments after the command's own:

==========  ====================================================
startup     ``COMMAND`` (no extra arguments)
train       ``COMMAND MODEL SETTINGS OUT_MODEL OUT_METADATA``
validate    ``COMMAND MODEL OUT_METRICS``
predict     ``COMMAND MODEL OUT_PREDICTIONS``
==========  ====================================================

``MODEL`` and ``OUT_MODEL`` are safetensors files (a list model's arrays are named
``"0".."n-1"``, see :mod:`fedgrpc.model.serialization`); ``SETTINGS`` is the session's
``client_settings`` as a JSON object. The command writes ``OUT_METADATA`` as a JSON object with
``num_examples`` (the update's weight), ``OUT_METRICS`` as a JSON object of metrics, and
``OUT_PREDICTIONS`` as any JSON. A non-zero exit, or an output it did not write, fails the task
with the command's last line on stderr; its output is logged.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedgrpc.errors import FailedPrecondition
from fedgrpc.model.serialization import dump_model, load_model
from fedgrpc.packages.manifest import EntryPoint

log = logging.getLogger(__name__)

PACKAGE_DIR_ENV = "FEDGRPC_PACKAGE_DIR"
_PYTHON_NAMES = ("python", "python3")


class Command:
    """One command entry point, bound to the directory it runs in."""

    def __init__(self, entry: EntryPoint, package_dir: Path) -> None:
        self.entry = entry
        self.package_dir = package_dir

    def run(self, *arguments: Path) -> None:
        argv = list(self.entry.argv)
        if argv[0] in _PYTHON_NAMES:
            argv[0] = sys.executable
        env = {**os.environ, PACKAGE_DIR_ENV: str(self.package_dir)}
        try:
            done = subprocess.run(
                [*argv, *map(str, arguments)],
                cwd=self.package_dir,
                env=env,
                capture_output=True,
                text=True,
                errors="replace",
                check=False,
            )
        except OSError as exc:
            raise self.failure(f"could not start: {exc.strerror or exc}") from None
        for stream, text in (("stdout", done.stdout), ("stderr", done.stderr)):
            if text.strip():
                log.info("%s command %s:\n%s", self.entry.name, stream, text.rstrip())
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output on stderr)"])[-1]
            raise self.failure(f"exited with code {done.returncode}: {last}")

    def read_json(self, path: Path, what: str) -> Any:
        try:
            return json.loads(self.read_output(path, what))
        except json.JSONDecodeError as exc:
            raise self.failure(f"wrote {what} that is not valid JSON: {exc}") from None

    def read_output(self, path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise self.failure(f"did not write {what} ({path.name})") from None

    def failure(self, reason: str) -> FailedPrecondition:
        return FailedPrecondition(f"{self.entry.name} command ({self.entry.spec}) {reason}")


def command_startup(command: Command) -> Callable[[], None]:
    def startup() -> None:
        command.run()

    return startup


def command_train(
    command: Command,
) -> Callable[[Any, Mapping[str, Any]], tuple[Any, dict[str, Any]]]:
    def train(model: Any, settings: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="fedgrpc-train-") as work:
            paths = [Path(work) / name for name in _TRAIN_FILES]
            paths[0].write_bytes(dump_model(model))
            paths[1].write_text(json.dumps(dict(settings)), encoding="utf-8")
            command.run(*paths)
            trained = load_model(command.read_output(paths[2], "the trained model"))
            metadata = command.read_json(paths[3], "the metadata")
        if not isinstance(metadata, dict):
            raise command.failure("wrote metadata that is not a JSON object")
        return trained, metadata

    return train


def command_validate(command: Command) -> Callable[[Any], dict[str, Any]]:
    def validate(model: Any) -> dict[str, Any]:
        metrics = _model_to_json(command, model, "metrics.json", "the metrics")
        if not isinstance(metrics, dict):
            raise command.failure("wrote metrics that are not a JSON object")
        return metrics

    return validate


def command_predict(command: Command) -> Callable[[Any], Any]:
    def predict(model: Any) -> Any:
        return _model_to_json(command, model, "predictions.json", "the predictions")

    return predict


_TRAIN_FILES = ("model.safetensors", "settings.json", "output.safetensors", "metadata.json")


def _model_to_json(command: Command, model: Any, output: str, what: str) -> Any:
    with tempfile.TemporaryDirectory(prefix=f"fedgrpc-{command.entry.name}-") as work:
        model_path, output_path = Path(work) / "model.safetensors", Path(work) / output
        model_path.write_bytes(dump_model(model))
        command.run(model_path, output_path)
        return command.read_json(output_path, what)
