"""One PNG: median round time and peak memory per workload, fedgrpc next to Flower."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.results import RunResult

MiB = 1024 * 1024
COLOURS = {"fedgrpc": "#1f77b4", "flower": "#ff7f0e"}


def plot(runs: list[RunResult], path: Path) -> None:
    names = list(dict.fromkeys(r.workload for r in runs))
    frameworks = [f for f in ("fedgrpc", "flower") if any(r.framework == f for r in runs)]
    figure, (times, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(1, len(frameworks))
    for offset, framework in enumerate(frameworks):
        found = {r.workload: r for r in runs if r.framework == framework and r.ok}
        xs = [i + (offset - (len(frameworks) - 1) / 2) * width for i in range(len(names))]
        seconds = [found[n].median_round_seconds if n in found else 0.0 for n in names]
        peaks = [_server_peak(found[n]) / MiB if n in found else 0.0 for n in names]
        colour = COLOURS[framework]
        times.bar(xs, seconds, width, label=framework, color=colour)
        memory.bar(xs, peaks, width, label=framework, color=colour)
    _style(times, names, "median round time (s, log)", log=True)
    _style(memory, names, "server / combiner peak RSS (MiB, log)", log=True)
    figure.suptitle("fedgrpc vs Flower on loopback (lower is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _server_peak(run: RunResult) -> float:
    return float(run.peak_rss.get("combiner") or run.peak_rss.get("server", 0))


def _style(axes: Axes, names: list[str], label: str, *, log: bool) -> None:
    axes.set_xticks(range(len(names)), names)
    axes.set_ylabel(label)
    if log:
        axes.set_yscale("log")
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
