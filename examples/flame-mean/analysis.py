"""A federated mean and histogram of CSV columns, written as a FLAME analysis.

The only fedgrpc-specific line is the import. Each default node reads the CSV files of its
first data source, computes count, sum and histogram counts of the chosen columns, and sends
them to the aggregator as intermediate data sealed for the aggregator (only it can open them;
the controller and combiners hold ciphertext). The aggregator adds them up and submits the
federated mean and histogram as a JSON string.

Run it as a compute package (this directory, with its ``fedgrpc.yaml``: ``fedgrpc analysis
start --package active ...`` once it is the active package; nodes download it), or with
``fedgrpc analysis start analysis:main --node ... --aggregator ...`` on nodes whose
``analysis_python_path`` contains this directory. Settings (``--settings``):
``{"columns": ["age", "bmi"], "edges": [0, 20, 40, 60, 80, 100]}``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from fedgrpc.flame import FlameCoreSDK

DEFAULT_EDGES = [0.0, 25.0, 50.0, 75.0, 100.0]


def settings() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(os.environ.get("FEDGRPC_ANALYSIS_SETTINGS") or "{}")
    return found


def local_rows(flame: FlameCoreSDK) -> list[dict[str, str]]:
    """Every row of every CSV file in this node's first data source."""
    source = flame.get_data_sources()[0]
    client = flame.get_data_client(source["id"])
    rows: list[dict[str, str]] = []
    for name in sorted(client.list_datasets()):
        rows += csv.DictReader(io.StringIO(client.get(name).decode()))
    return rows


def histogram(values: list[float], edges: list[float]) -> list[int]:
    """Counts per [edge_i, edge_i+1); the last bin includes its right edge."""
    counts = [0] * (len(edges) - 1)
    for value in values:
        for index in range(len(counts)):
            last = index == len(counts) - 1
            if edges[index] <= value < edges[index + 1] or (last and value == edges[-1]):
                counts[index] += 1
                break
    return counts


def local_statistics(
    rows: list[dict[str, str]], columns: list[str], edges: list[float]
) -> dict[str, Any]:
    stats = {}
    for column in columns:
        values = [float(row[column]) for row in rows if row.get(column) not in (None, "")]
        stats[column] = {"n": len(values), "sum": sum(values), "counts": histogram(values, edges)}
    return stats


def combine(parts: list[dict[str, Any]], columns: list[str], edges: list[float]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for column in columns:
        n = sum(part[column]["n"] for part in parts)
        total = sum(part[column]["sum"] for part in parts)
        counts = [
            sum(bins) for bins in zip(*(part[column]["counts"] for part in parts), strict=True)
        ]
        result[column] = {"n": n, "mean": total / n if n else None, "counts": counts}
    return {"edges": edges, "columns": result}


def main() -> None:
    flame = FlameCoreSDK(silent=False)
    config = settings()
    columns: list[str] = config.get("columns") or ["value"]
    edges: list[float] = [float(edge) for edge in config.get("edges") or DEFAULT_EDGES]
    aggregator = flame.get_aggregator_id()

    if flame.get_role() == "default":
        rows = local_rows(flame)
        flame.flame_log(f"read {len(rows)} rows", log_type="info")
        flame.set_progress(50)
        stats = local_statistics(rows, columns, edges)
        _, missing = flame.send_intermediate_data([str(aggregator)], stats, timeout=120)
        if missing:
            flame.flame_log(f"aggregator did not acknowledge: {missing}", log_type="error")
        flame.set_progress(100)
    else:
        senders = [node for node in flame.get_participant_ids() if node != flame.get_id()]
        received = flame.await_intermediate_data(senders, timeout=300)
        lost = [node for node, data in received.items() if data is None]
        if lost:
            flame.flame_log(f"no data from {lost}", log_type="error")  # fails the analysis
        result = combine([received[node] for node in senders], columns, edges)
        flame.flame_log(f"combined {len(senders)} nodes", log_type="info")
        flame.submit_final_result(json.dumps(result), output_type="str")
        flame.set_progress(100)
    flame.analysis_finished()


if __name__ == "__main__":
    main()
