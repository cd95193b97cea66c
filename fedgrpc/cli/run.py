"""``fedgrpc run``: the quickstart, a whole federated network on this machine."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("run")
@click.option("--clients", type=click.IntRange(2, 64), default=4, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option(
    "--aggregator",
    default="fedavg",
    show_default=True,
    help="fedavg, fedadam, fedyogi, fedadagrad or a registered plugin.",
)
@click.option("--local-epochs", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the statestore, models and logs here (default: a temporary directory).",
)
def run_command(
    clients: int, rounds: int, aggregator: str, local_epochs: int, data_dir: Path | None
) -> None:
    """Train a model across a local federated network and compare it with local training.

    Starts a controller, a combiner and CLIENTS client processes on the embedded statestore,
    trains a softmax regression on scikit-learn's digits split non-IID across the clients,
    and stops everything it started when it ends or on Ctrl-C.
    """
    from fedgrpc.quickstart.run import RunOptions, run

    result = run(
        RunOptions(
            clients=clients,
            rounds=rounds,
            aggregator=aggregator,
            local_epochs=local_epochs,
            data_dir=data_dir,
        ),
        say=lambda line: click.echo(line),
    )
    if result.session_status != "finished":
        raise click.ClickException(f"the session ended as {result.session_status}")
