"""The ``fedmq`` command line: one typer app, commands grouped by noun.

Errors a user can cause arrive as ``FedmqError`` and leave as one line on stderr and
that error class's exit status; never as a traceback.
"""

from __future__ import annotations

import sys

import typer

from fedmq._version import __version__
from fedmq.errors import FedmqError
from tools.cli import agent, aggregator, broker, certs, data, demo, fleet, inspect, model, simulate

app = typer.Typer(
    name="fedmq",
    help="Asynchronous, staleness-aware federated learning for small devices over MQTT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
agent.register(app)
aggregator.register(app)
broker.register(app)
certs.register(app)
data.register(app)
demo.register(app)
fleet.register(app)
inspect.register(app)
model.register(app)
simulate.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedmq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Asynchronous, staleness-aware federated learning for small devices over MQTT."""


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="fedmq")
    except FedmqError as exc:
        typer.secho(f"fedmq: error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("fedmq: interrupted", err=True)
        sys.exit(130)
