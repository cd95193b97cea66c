"""How the benchmark report treats repeated runs (``python -m bench --repeat N``): it leads
with the pair of median round-time ratio, shows the spread, and judges memory on every run."""

from __future__ import annotations

import pytest

from bench.cli import parse_args
from bench.pairs import headline_runs, median_pair, pairs, ratio_spread
from bench.report import markdown, ratio_table, targets
from bench.results import RunResult, SuiteResult

MiB = 1024 * 1024


def _run(
    framework: str,
    repeat: int,
    round_seconds: float,
    *,
    workload: str = "overhead",
    ok: bool = True,
    server_mib: int = 50,
) -> RunResult:
    role = "combiner" if framework == "fedgrpc" else "server"
    return RunResult(
        framework,
        workload,
        clients=10,
        params=25_000_000 if workload == "bandwidth" else 1_000,
        rounds=3,
        ok=ok,
        failure="" if ok else "boom",
        round_seconds=[round_seconds] * 3,
        peak_rss={role: server_mib * MiB, "client": 40 * MiB},
        repeat=repeat,
    )


def _repeated(ours: list[float], flower: list[float]) -> list[RunResult]:
    return [
        run
        for repeat, (a, b) in enumerate(zip(ours, flower, strict=True))
        for run in (_run("fedgrpc", repeat, a), _run("flower", repeat, b))
    ]


def test_the_report_leads_with_the_pair_of_median_ratio() -> None:
    runs = _repeated([0.010, 0.012, 0.009], [0.020, 0.016, 0.010])  # ratios 0.50, 0.75, 0.90

    pair = median_pair(runs, "overhead")

    assert pair is not None
    assert pair.ours.repeat == 1
    assert pair.flower.repeat == 1
    assert pair.round_ratio == pytest.approx(0.75)
    assert ratio_spread(runs, "overhead") == "median of 3 pairs, range 0.500-0.900x"
    assert headline_runs(runs) == [pair.ours, pair.flower]


def test_an_even_count_leads_with_the_lower_middle_pair() -> None:
    # Ratios 0.5, 0.4, 0.8, 0.9: the lower middle of the sorted four is 0.5.
    runs = _repeated([0.010, 0.010, 0.010, 0.010], [0.020, 0.025, 0.0125, 0.0111])

    pair = median_pair(runs, "overhead")

    assert pair is not None
    assert pair.round_ratio == pytest.approx(0.5)


def test_a_pair_with_a_failed_run_does_not_count() -> None:
    runs = _repeated([0.010, 0.010], [0.020, 0.040])
    runs[3] = _run("flower", 1, 0.040, ok=False)

    assert [p.ours.repeat for p in pairs(runs, "overhead")] == [0]
    assert ratio_spread(runs, "overhead") == ""  # one pair: nothing to spread


def test_without_flower_the_run_of_median_round_time_leads() -> None:
    runs = [_run("fedgrpc", i, s) for i, s in enumerate([0.03, 0.01, 0.02])]
    runs.append(_run("fedgrpc", 3, 0.001, ok=False))

    assert [r.repeat for r in headline_runs(runs)] == [2]


def test_targets_and_tables_show_the_spread_and_judge_memory_on_every_run() -> None:
    runs = _repeated([0.010, 0.012, 0.009], [0.020, 0.016, 0.010])
    runs += [
        _run("fedgrpc", 0, 1.0, workload="bandwidth", server_mib=300),
        _run("flower", 0, 8.0, workload="bandwidth", server_mib=2_000),
        _run("fedgrpc", 1, 1.0, workload="bandwidth", server_mib=500),  # 5.2x the model
        _run("flower", 1, 8.0, workload="bandwidth", server_mib=2_000),
    ]
    suite = SuiteResult(command="python -m bench --repeat 3", machine={}, runs=runs)

    by_name = {t.what: t for t in targets(suite)}

    overhead = by_name["overhead median round"]
    assert overhead.measured == "0.750x (median of 3 pairs, range 0.500-0.900x)"
    assert overhead.met is False
    memory = by_name["bandwidth combiner peak RSS"]
    assert memory.measured == "5.2x (highest of 2 runs)"
    assert memory.met is False
    table = "\n".join(ratio_table(runs))
    assert "median of 3 pairs, range 0.500-0.900x" in table
    assert "| bandwidth | 0.12 |" in table


def test_a_single_run_reports_as_before() -> None:
    runs = _repeated([0.010], [0.020])
    suite = SuiteResult(
        command="python -m bench",
        machine={
            "nproc": 2,
            "cpu": "x",
            "memory_gib": 1,
            "kernel": "k",
            "python": "3",
            "packages": {},
        },
        runs=runs,
    )

    text = markdown(suite, [])

    assert "| overhead median round | <= 0.5x Flower | 0.500x | yes |" in text
    assert "#1" not in text
    assert "all pairs" not in text


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_repeat_must_be_a_positive_whole_number(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--repeat", value])

    assert exit_info.value.code == 2
    assert "--repeat" in capsys.readouterr().err
