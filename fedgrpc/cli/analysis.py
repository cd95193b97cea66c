"""``fedgrpc analysis start|list|get|logs|results|stop``: federated analyses (FLAME)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fedgrpc.cli.connection import controller_options, page_options
from fedgrpc.cli.output import json_option, show_list, show_record, table
from fedgrpc.cli.session import _json_object

if TYPE_CHECKING:
    from fedgrpc.api import APIClient

COLUMNS = ("analysis_id", "project_id", "status", "entrypoint", "result_id", "created_at")
NODE_COLUMNS = ("node_id", "role", "status", "progress", "message")
LOG_COLUMNS = ("created_at", "node_id", "log_type", "message")


@click.group("analysis")
def analysis_group() -> None:
    """Federated analyses (FLAME): start them on nodes, follow, read logs and results."""


@analysis_group.command("start")
@controller_options
@click.argument("entrypoint", required=False, default="")
@click.option("--node", "nodes", multiple=True, required=True, help="A node (repeat).")
@click.option("--aggregator", required=True, help="The node that aggregates (one of --node).")
@click.option("--project", "project_id", default="", help="Project id (default: default).")
@click.option("--id", "analysis_id", default="", help="Analysis id (default: generated).")
@click.option(
    "--package",
    "package_id",
    default="",
    help="Compute package id or 'active': ENTRYPOINT names one of its entry points "
    "(default: analysis).",
)
@click.option("--settings", help="JSON object passed to the analysis.")
@click.option("--timeout", type=float, default=0.0, help="Seconds before it fails (0: none).")
@click.option("--wait", is_flag=True, help="Wait until it has ended.")
@json_option
def start(
    api: APIClient,
    entrypoint: str,
    nodes: tuple[str, ...],
    settings: str | None,
    wait: bool,
    as_json: bool,
    **fields: str | float,
) -> None:
    """Run ENTRYPOINT ('module:function', or an entry point of --package) on the nodes."""
    if not entrypoint and not fields["package_id"]:
        raise click.UsageError("give ENTRYPOINT (module:function), or --package")
    analysis = api.start_analysis(
        entrypoint,
        list(nodes),
        str(fields.pop("aggregator")),
        settings=_json_object("--settings", settings),
        project_id=str(fields["project_id"]),
        analysis_id=str(fields["analysis_id"]),
        package_id=str(fields["package_id"]),
        timeout=float(fields["timeout"]),
    )
    if wait:
        _show_analysis(api.wait_for_analysis(analysis["analysis_id"]), as_json=as_json)
        _fail_unless_executed(api.get_analysis(analysis["analysis_id"]))
    elif as_json:
        show_record(analysis, as_json=True)
    else:
        click.echo(f"analysis {analysis['analysis_id']} started")


@analysis_group.command("list")
@controller_options
@page_options
@click.option("--project", "project_id", help="Only this project's analyses.")
@click.option("--status", help="Only analyses with this status.")
@json_option
def list_analyses(
    api: APIClient, limit: int | None, project_id: str | None, status: str | None, as_json: bool
) -> None:
    """List analyses, newest first."""
    found = api.list_analyses(n_max=limit, project_id=project_id, status=status)
    show_list(found, COLUMNS, as_json=as_json)


@analysis_group.command("get")
@controller_options
@click.argument("analysis_id")
@json_option
def get(api: APIClient, analysis_id: str, as_json: bool) -> None:
    """Show one analysis and its nodes."""
    _show_analysis(api.get_analysis(analysis_id), as_json=as_json)


@analysis_group.command("logs")
@controller_options
@click.argument("analysis_id")
@click.option("--node", "node_id", default="", help="Only this node's lines.")
@click.option("--type", "log_type", default="", help="Only lines of this log type.")
@json_option
def logs(api: APIClient, analysis_id: str, node_id: str, log_type: str, as_json: bool) -> None:
    """The log lines the nodes sent (flame_log), oldest first."""
    lines = api.get_analysis_logs(analysis_id, node_id=node_id, log_type=log_type)
    show_list({"count": len(lines), "result": lines}, LOG_COLUMNS, as_json=as_json)


@analysis_group.command("results")
@controller_options
@click.argument("analysis_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File.")
def results(api: APIClient, analysis_id: str, output: Path | None) -> None:
    """Download the final result: to --output, else to standard output as it is."""
    data = api.download_analysis_result(analysis_id, output)
    if output is not None:
        click.echo(f"wrote {len(data)} bytes to {output}")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


@analysis_group.command("stop")
@controller_options
@click.argument("analysis_id")
@json_option
def stop(api: APIClient, analysis_id: str, as_json: bool) -> None:
    """Stop a running analysis on every node."""
    _show_analysis(api.stop_analysis(analysis_id), as_json=as_json)


def _show_analysis(analysis: dict[str, object], *, as_json: bool) -> None:
    if as_json:
        show_record(analysis, as_json=True)
        return
    summary = {key: value for key, value in analysis.items() if key != "nodes"}
    show_record(summary, as_json=False)
    nodes = analysis.get("nodes")
    click.echo(table(nodes if isinstance(nodes, list) else [], NODE_COLUMNS))


def _fail_unless_executed(analysis: dict[str, object]) -> None:
    if analysis.get("status") != "executed":
        raise click.ClickException(
            f"analysis {analysis.get('analysis_id')} ended as {analysis.get('status')}: "
            f"{analysis.get('message', '')}"
        )
