"""The Markdown report: figures per workload, fedgrpc/Flower ratios, kernels and targets."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from bench.pairs import headline_runs, median_pair, ratio_spread
from bench.results import KernelResult, RunResult, SuiteResult

MiB = 1024 * 1024
COMPARED = ("overhead", "bandwidth", "fanout")


@dataclass(frozen=True)
class Target:
    what: str
    goal: str
    measured: str
    met: bool | None  # None: not measured


def _mib(value: float) -> str:
    return f"{value / MiB:,.0f}" if value else "-"


def _seconds(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a and b and math.isfinite(a) and math.isfinite(b) else "-"


def _server_rss(run: RunResult) -> int:
    return run.peak_rss.get("combiner") or run.peak_rss.get("server", 0)


def _status(run: RunResult) -> str:
    """ "ok", or the failure on one line that fits a table cell (gRPC errors span lines)."""
    if run.ok:
        return "ok"
    text = " ".join(str(run.failure).split()).replace("|", "/")
    return f"FAILED: {text[:240]}{'…' if len(text) > 240 else ''}"


def run_table(runs: list[RunResult]) -> list[str]:
    lines = [
        "| workload | framework | result | median round s | rounds wall s | start-up s "
        "| server/combiner peak MiB | controller peak MiB | largest client peak MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    repeated = any(run.repeat for run in runs)
    for run in runs:
        status = _status(run)
        framework = f"{run.framework} #{run.repeat + 1}" if repeated else run.framework
        lines.append(
            f"| {run.workload} ({run.clients} clients, {run.params:,} params, {run.rounds} rounds) "
            f"| {framework} | {status} | {_seconds(run.median_round_seconds)} "
            f"| {_seconds(run.rounds_wall_seconds)} | {_seconds(run.startup_seconds)} "
            f"| {_mib(_server_rss(run))} | {_mib(run.peak_rss.get('controller', 0))} "
            f"| {_mib(run.peak_rss.get('client', 0))} |"
        )
    return lines


def ratio_table(runs: list[RunResult]) -> list[str]:
    """The ratios of the median pair (the only pair without ``--repeat``); with repeats, the
    median and range of every pair's round-time ratio beside them."""
    repeated = any(run.repeat for run in runs)
    lines = [
        "| workload | median round | rounds wall | start-up | server peak RSS "
        "(combiner / Flower server) | largest client peak RSS |"
        + (" median round, all pairs |" if repeated else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---|" if repeated else ""),
    ]
    for name in COMPARED:
        pair = median_pair(runs, name)
        if pair is None:
            continue
        ours, flower = pair.ours, pair.flower
        spread = f" {ratio_spread(runs, name) or '-'} |" if repeated else ""
        lines.append(
            f"| {name} | {_ratio(ours.median_round_seconds, flower.median_round_seconds)} "
            f"| {_ratio(ours.rounds_wall_seconds, flower.rounds_wall_seconds)} "
            f"| {_ratio(ours.startup_seconds, flower.startup_seconds)} "
            f"| {_ratio(_server_rss(ours), _server_rss(flower))} "
            f"| {_ratio(ours.peak_rss.get('client', 0), flower.peak_rss.get('client', 0))} |"
            + spread
        )
    return lines


def breakdown_table(runs: list[RunResult]) -> list[str]:
    """Where fedgrpc's round time goes, and who burns the CPU over the whole run."""
    lines = [
        "| workload | framework | median round s | median slowest client task s "
        "| rest of the round s | CPU s, server side | CPU s, all clients |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        if not run.ok:
            continue
        slowest = run.extra.get("slowest_client_seconds") or []
        task = statistics.median(slowest) if slowest else float("nan")
        rest = run.median_round_seconds - task if slowest else float("nan")
        cpu = run.extra.get("cpu_seconds", {})
        server = cpu.get("server", 0.0) + cpu.get("controller", 0.0) + cpu.get("combiner", 0.0)
        lines.append(
            f"| {run.workload} | {run.framework} | {_seconds(run.median_round_seconds)} "
            f"| {_seconds(task)} | {_seconds(rest)} | {server:.1f} "
            f"| {cpu.get('clients', 0.0):.1f} |"
        )
    return lines


def kernel_table(kernels: list[KernelResult]) -> list[str]:
    lines = [
        "| kernel | MB per call | fedgrpc MB/s | limit | limit MB/s | ratio to limit |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for k in kernels:
        lines.append(
            f"| {k.name} | {k.bytes_per_call / 1e6:,.0f} | {k.throughput / 1e6:,.0f} "
            f"| {k.limit_name} | {k.limit_throughput / 1e6:,.0f} | {k.ratio_to_limit:.2f} |"
        )
    return lines


def targets(suite: SuiteResult) -> list[Target]:
    found = [*_round_targets(suite.runs), *_memory_targets(suite.runs)]
    found += _scale_targets(suite)
    found += [_kernel_target(k) for k in suite.kernels]
    return found


def _round_targets(runs: list[RunResult]) -> list[Target]:
    found = []
    for name, goal in (("bandwidth", 0.2), ("overhead", 0.5), ("fanout", 0.5)):
        if not any(r.workload == name for r in runs):
            continue
        pair = median_pair(runs, name)
        if pair is None:
            found.append(Target(f"{name} median round", f"<= {goal}x Flower", "-", None))
            continue
        spread = ratio_spread(runs, name)
        measured = f"{pair.round_ratio:.3f}x" + (f" ({spread})" if spread else "")
        found.append(
            Target(f"{name} median round", f"<= {goal}x Flower", measured, pair.round_ratio <= goal)
        )
    return found


def _memory_targets(runs: list[RunResult]) -> list[Target]:
    """Judged on the highest peak of every bandwidth run: memory must hold in each of them."""
    found = [r for r in runs if r.workload == "bandwidth" and r.framework == "fedgrpc"]
    if not found:
        return []
    highest = max(found, key=lambda r: r.peak_rss.get("combiner", 0))
    measured = highest.peak_rss.get("combiner", 0) / (4 * highest.params)
    of_runs = f" (highest of {len(found)} runs)" if len(found) > 1 else ""
    return [
        Target(
            "bandwidth combiner peak RSS",
            "<= 4x model size",
            f"{measured:.1f}x{of_runs}",
            all(r.ok for r in found) and measured <= 4,
        )
    ]


def _scale_targets(suite: SuiteResult) -> list[Target]:
    if not suite.scale:
        return []
    s = suite.scale
    per_client = s.get("target_combiner_rss_per_client", 0.0) / 1024
    measured = (
        f"{'completed' if s['target_ok'] else 'FAILED'}; median round "
        f"{_seconds(s.get('target_median_round_seconds', float('nan')))} s, combiner "
        f"{per_client:,.0f} KiB/client; largest completed: {s.get('largest_ok_clients', 0):,}"
    )
    goal = f"{s['target_clients']:,} clients complete on one combiner"
    return [Target("scale", goal, measured, bool(s["target_ok"]))]


def _kernel_target(kernel: KernelResult) -> Target:
    goal = 0.5 if kernel.name.startswith("fedavg") else 0.4
    return Target(
        kernel.name,
        f">= {goal}x {kernel.limit_name}",
        f"{kernel.ratio_to_limit:.2f}x",
        kernel.ok and kernel.ratio_to_limit >= goal,
    )


def target_table(found: list[Target]) -> list[str]:
    lines = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for t in found:
        met = "n/a" if t.met is None else ("yes" if t.met else "**no**")
        lines.append(f"| {t.what} | {t.goal} | {t.measured} | {met} |")
    return lines


def scale_table(runs: list[RunResult]) -> list[str]:
    lines = [
        "| clients | processes | result | median round s | start-up s | combiner peak MiB "
        "| combiner KiB/client | controller peak MiB | largest client process MiB |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        combiner = run.peak_rss.get("combiner", 0)
        status = _status(run)
        lines.append(
            f"| {run.clients:,} | {run.extra.get('client_processes', '-')} | {status} "
            f"| {_seconds(run.median_round_seconds)} | {_seconds(run.startup_seconds)} "
            f"| {_mib(combiner)} | {combiner / 1024 / run.clients:,.0f} "
            f"| {_mib(run.peak_rss.get('controller', 0))} | {_mib(run.peak_rss.get('client', 0))} |"
        )
    return lines


def markdown(suite: SuiteResult, scale_runs: list[RunResult]) -> str:
    m = suite.machine
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    flower = ", ".join(f"{k} {v}" for k, v in m.get("flower", {}).items()) or "not run"
    parts = [
        "# fedgrpc benchmark results",
        "",
        f"Command: `{suite.command}`",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}; {packages}; Flower side: {flower}.",
        "",
    ]
    if suite.runs:
        parts += ["## Workloads", "", *run_table(suite.runs), ""]
        parts += ["### fedgrpc / Flower", "", *ratio_table(suite.runs), ""]
        breakdown = breakdown_table(headline_runs(suite.runs))
        parts += ["### Where the time goes", "", *breakdown, ""]
    if scale_runs:
        parts += ["## Scale (fedgrpc, one combiner)", "", *scale_table(scale_runs), ""]
    if suite.kernels:
        parts += ["## Kernels", "", *kernel_table(suite.kernels), ""]
    parts += ["## Targets", "", *target_table(targets(suite)), ""]
    return "\n".join(parts)
