"""``python -m bench``: run the suites, write JSON, Markdown and a plot."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.fedgrpc_run import run_fedgrpc
from bench.flower_env import ensure_flower_env
from bench.flower_run import find_flower_python, flower_version, run_flower
from bench.kernels import fedavg_kernels, transfer_kernels
from bench.machine import machine_info
from bench.pairs import headline_runs
from bench.plot import plot
from bench.report import markdown
from bench.results import KernelResult, RunResult, SuiteResult
from bench.scale import ScalePlan, run_scale
from bench.workload import Workload

SUITES = ("all", "overhead", "bandwidth", "fanout", "scale", "kernels")
DEFAULT_OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Sizes:
    workloads: dict[str, Workload]
    scale: ScalePlan
    kernel_bytes: int
    kernel_repeats: int


FULL = Sizes(
    workloads={
        "overhead": Workload("overhead", 10, 1_000, 20),
        "bandwidth": Workload("bandwidth", 4, 25_000_000, 3),
        "fanout": Workload("fanout", 50, 100_000, 5),
    },
    scale=ScalePlan(),
    kernel_bytes=100_000_000,
    kernel_repeats=5,
)
QUICK = Sizes(
    workloads={
        "overhead": Workload("overhead", 2, 100, 2),
        "bandwidth": Workload("bandwidth", 2, 25_000, 2),
        "fanout": Workload("fanout", 3, 1_000, 2),
    },
    scale=ScalePlan(clients=20, params=100, rounds=2, max_clients=20, budget_seconds=60),
    kernel_bytes=1_000_000,
    kernel_repeats=3,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--suite", choices=SUITES, action="append", help="repeatable; default: all")
    parser.add_argument("--quick", "--tiny", action="store_true", help="tiny sizes (smoke)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--flower-python",
        help="interpreter with flwr installed (default: $BENCH_FLOWER_PYTHON, else this one if "
        "it has flwr, else a venv with flwr==1.41.0 made once under ~/.cache/fedgrpc-bench)",
    )
    parser.add_argument("--no-flower", action="store_true", help="run fedgrpc only")
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run each compared workload N times, the frameworks taking turns; the report "
        "leads with the pair of median round-time ratio and shows the range (default: 1)",
    )
    parser.add_argument("--scale-max", type=int, help="largest client count the search tries")
    parser.add_argument("--scale-budget", type=float, help="seconds the scale search may take")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite results.md and results.png from OUT/results.json, run nothing",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> SuiteResult:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        suite, scale_runs = SuiteResult.read(out / "results.json")
    else:
        command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
        suite, scale_runs = _run_suites(args, command, out)
    _write(suite, scale_runs, out)
    return suite


def _run_suites(
    args: argparse.Namespace, command: str, out: Path
) -> tuple[SuiteResult, list[RunResult]]:
    sizes = QUICK if args.quick else FULL
    flower = None
    if not args.no_flower:
        flower = find_flower_python(args.flower_python) or ensure_flower_env(say=_say)
    flower_info = {"flwr": flower_version(flower), "python": flower} if flower else {}
    suite = SuiteResult(command=command, machine=machine_info(flower_info))
    chosen = args.suite or ["all"]
    selected = list(SUITES[1:]) if "all" in chosen else list(dict.fromkeys(chosen))
    scale_runs: list[RunResult] = []
    for name in selected:
        _say(f"== {name}")
        if name in sizes.workloads:
            logs = out / "logs" / name
            suite.runs += _compare(sizes.workloads[name], logs, flower, args.repeat)
        elif name == "scale":
            scale_runs = _scale(sizes.scale, args, out, suite)
        else:
            suite.kernels += _kernels(sizes, out / "logs" / "kernels")
    return suite, scale_runs


def _kernels(sizes: Sizes, logs: Path) -> list[KernelResult]:
    kernels = fedavg_kernels(sizes.kernel_bytes, sizes.kernel_repeats)
    kernels += transfer_kernels(sizes.kernel_bytes, sizes.kernel_repeats, logs)
    for kernel in kernels:
        _say(f"   {kernel.name}: {kernel.ratio_to_limit:.2f}x {kernel.limit_name}")
    return kernels


def _compare(
    workload: Workload, logs: Path, flower: str | None, repeats: int = 1
) -> list[RunResult]:
    """The workload on both frameworks, ``repeats`` times; each repetition starts with the
    framework the previous one ended with (A B B A ...), so neither always goes first."""
    runs: list[RunResult] = []
    for repeat in range(repeats):
        order = ["fedgrpc", "flower"] if flower is not None else ["fedgrpc"]
        for framework in order if repeat % 2 == 0 else order[::-1]:
            run_logs = logs / framework / (str(repeat) if repeats > 1 else "")
            if framework == "fedgrpc":
                run = run_fedgrpc(workload, run_logs)
            else:
                run = run_flower(workload, run_logs, str(flower))
            run.repeat = repeat
            runs.append(run)
            _say(
                f"   {run.framework}{f' #{repeat + 1}' if repeats > 1 else ''}: "
                f"{'ok' if run.ok else run.failure}, median round "
                f"{run.median_round_seconds:.4f} s"
            )
    return runs


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _scale(
    sizes: ScalePlan, args: argparse.Namespace, out: Path, suite: SuiteResult
) -> list[RunResult]:
    plan = ScalePlan(
        clients=sizes.clients,
        params=sizes.params,
        rounds=sizes.rounds,
        max_clients=args.scale_max or sizes.max_clients,
        budget_seconds=args.scale_budget or sizes.budget_seconds,
    )
    attempts, summary = run_scale(plan, out / "logs" / "scale")
    suite.scale = {**summary, "attempts": [a.to_json() for a in attempts]}
    for a in attempts:
        _say(
            f"   {a.clients} clients: {'ok' if a.ok else a.failure}, median round "
            f"{a.median_round_seconds:.3f} s"
        )
    return attempts


def _write(suite: SuiteResult, scale_runs: list[RunResult], out: Path) -> None:
    suite.write(out / "results.json")
    (out / "results.md").write_text(markdown(suite, scale_runs))
    if suite.runs:
        plot(headline_runs(suite.runs), out / "results.png")
    _say(f"wrote {out / 'results.json'}, {out / 'results.md'}")


def _say(message: str) -> None:
    print(message, flush=True)
