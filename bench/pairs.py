"""Repeated runs of a workload: which pair of runs a report leads with, and the spread.

On a busy or virtualised host one fedgrpc/Flower pair of a short workload can land anywhere in
a wide range (the overhead round of either framework varied by 2x between runs on the
benchmark host). With ``--repeat N`` every compared workload runs N times, the frameworks
taking turns, and the report leads with the pair whose round-time ratio is the median, showing
the range of all pairs beside it. With one repetition this is the only pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.results import RunResult


@dataclass(frozen=True)
class Pair:
    """fedgrpc's and Flower's run of one workload in the same repetition."""

    ours: RunResult
    flower: RunResult

    @property
    def round_ratio(self) -> float:
        return self.ours.median_round_seconds / self.flower.median_round_seconds


def pairs(runs: list[RunResult], workload: str) -> list[Pair]:
    """The workload's pairs in which both runs succeeded, in repetition order."""
    by_repeat: dict[int, dict[str, RunResult]] = {}
    for run in runs:
        if run.workload == workload and run.ok:
            by_repeat.setdefault(run.repeat, {})[run.framework] = run
    found = [
        Pair(frameworks["fedgrpc"], frameworks["flower"])
        for _, frameworks in sorted(by_repeat.items())
        if {"fedgrpc", "flower"} <= frameworks.keys()
    ]
    return [p for p in found if math.isfinite(p.round_ratio) and p.round_ratio > 0]


def median_pair(runs: list[RunResult], workload: str) -> Pair | None:
    """The pair with the median round-time ratio (the lower middle one of an even count)."""
    found = sorted(pairs(runs, workload), key=lambda p: p.round_ratio)
    return found[(len(found) - 1) // 2] if found else None


def ratio_spread(runs: list[RunResult], workload: str) -> str:
    """How many pairs the median ratio is of, and their range; "" for a single pair."""
    ratios = [p.round_ratio for p in pairs(runs, workload)]
    if len(ratios) < 2:
        return ""
    # Three decimals: a range shown as "0.15-0.20x" would hide a pair at 0.204x of a 0.2x goal.
    return f"median of {len(ratios)} pairs, range {min(ratios):.3f}-{max(ratios):.3f}x"


def headline_runs(runs: list[RunResult]) -> list[RunResult]:
    """One run per workload and framework: those of the median pair; where a workload has no
    pair (Flower not run or failed), each framework's run of median round time, a failed run
    only when that framework has no successful one."""
    chosen: list[RunResult] = []
    for workload in dict.fromkeys(r.workload for r in runs):
        pair = median_pair(runs, workload)
        if pair is not None:
            chosen += [pair.ours, pair.flower]
            continue
        of_workload = [r for r in runs if r.workload == workload]
        for framework in dict.fromkeys(r.framework for r in of_workload):
            chosen.append(_median_run([r for r in of_workload if r.framework == framework]))
    return chosen


def _median_run(runs: list[RunResult]) -> RunResult:
    ok = sorted((r for r in runs if r.ok), key=lambda r: r.median_round_seconds)
    return ok[(len(ok) - 1) // 2] if ok else runs[0]
