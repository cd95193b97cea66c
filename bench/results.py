"""What one benchmark run measured, and how it is written to JSON."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunResult:
    """One workload on one framework. ``ok`` is False when the run failed or was wrong."""

    framework: str
    workload: str
    clients: int
    params: int
    rounds: int
    ok: bool = False
    failure: str = ""
    max_error: float = float("inf")
    round_seconds: list[float] = field(default_factory=list)
    rounds_wall_seconds: float = 0.0
    startup_seconds: float = 0.0
    # role -> peak resident set in bytes: controller, combiner, server, client (the largest).
    peak_rss: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    repeat: int = 0  # which repetition of the workload (``--repeat``), from 0

    @property
    def median_round_seconds(self) -> float:
        return statistics.median(self.round_seconds) if self.round_seconds else float("nan")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["median_round_seconds"] = self.median_round_seconds
        return data


@dataclass
class KernelResult:
    """A kernel's throughput next to the limit it is measured against."""

    name: str
    bytes_per_call: int
    seconds: float
    limit_name: str
    limit_seconds: float
    ok: bool = True
    failure: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.bytes_per_call / self.seconds if self.seconds else 0.0

    @property
    def limit_throughput(self) -> float:
        return self.bytes_per_call / self.limit_seconds if self.limit_seconds else 0.0

    @property
    def ratio_to_limit(self) -> float:
        return self.throughput / self.limit_throughput if self.limit_throughput else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            throughput=self.throughput,
            limit_throughput=self.limit_throughput,
            ratio_to_limit=self.ratio_to_limit,
        )
        return data


@dataclass
class SuiteResult:
    command: str
    machine: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)
    kernels: list[KernelResult] = field(default_factory=list)
    scale: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "machine": self.machine,
            "runs": [run.to_json() for run in self.runs],
            "kernels": [kernel.to_json() for kernel in self.kernels],
            "scale": self.scale,
        }

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2, default=_jsonable) + "\n")

    @classmethod
    def read(cls, path: Path) -> tuple[SuiteResult, list[RunResult]]:
        """A written suite, and its scale attempts as runs."""
        data = json.loads(path.read_text())
        suite = cls(command=data["command"], machine=data["machine"], scale=data["scale"])
        suite.runs = [_run(run) for run in data["runs"]]
        suite.kernels = [_kernel(kernel) for kernel in data["kernels"]]
        return suite, [_run(run) for run in data["scale"].get("attempts", [])]


def _run(data: dict[str, Any]) -> RunResult:
    fields = {k: v for k, v in data.items() if k != "median_round_seconds"}
    return RunResult(**fields)


def _kernel(data: dict[str, Any]) -> KernelResult:
    derived = ("throughput", "limit_throughput", "ratio_to_limit")
    return KernelResult(**{k: v for k, v in data.items() if k not in derived})


def _jsonable(value: object) -> object:
    return str(value)
