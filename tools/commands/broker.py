"""``fedmq broker``: run a development broker on this machine."""

from __future__ import annotations

from pathlib import Path

import typer

from fedmq.errors import ConfigError

broker_app = typer.Typer(
    no_args_is_help=False, invoke_without_command=True, rich_markup_mode="markdown"
)


@broker_app.callback()
def broker_command(
    ctx: typer.Context,
    port: int = typer.Option(1883, help="TCP port on 127.0.0.1 (0 picks a free one)."),
    kind: str = typer.Option(
        "auto",
        help="auto: Mosquitto when installed, else embedded; or force mosquitto | embedded.",
    ),
    config: Path = typer.Option(
        None,
        help="Mosquitto config template (default broker_config/dev.conf); Mosquitto only.",
    ),
) -> None:
    """Run a development broker on 127.0.0.1 until Ctrl-C or SIGTERM.

    With Mosquitto installed this runs `mosquitto -c` with broker_config/dev.conf
    (loopback only, anonymous, persistence on). Without it, fedmq's embedded broker
    runs in-process instead: MQTT 3.1.1, QoS 0/1, retained messages, last wills and
    persistent sessions held in memory; no TLS, no passwords, no QoS 2. Neither is
    for a real fleet: see broker_config/production.conf.
    """
    if ctx.invoked_subcommand is not None:
        return
    from tools.broker import DEV_CONF, EmbeddedBroker, MosquittoBroker, choose_broker

    if not 0 <= port <= 65535:
        raise ConfigError("bad_port", f"--port {port} is not a TCP port (0..65535)")
    if kind not in ("auto", "mosquitto", "embedded"):
        raise ConfigError("bad_broker_kind", f"--kind {kind!r} is not auto|mosquitto|embedded")
    broker = choose_broker(kind, port)  # type: ignore[arg-type]
    if config is not None:
        if not isinstance(broker, MosquittoBroker):
            raise ConfigError("bad_config", "--config needs Mosquitto (install it or --kind)")
        broker = MosquittoBroker(port, config=config)

    def ready(b: object) -> None:
        what = (
            f"mosquitto ({Path(config or DEV_CONF)})"
            if not isinstance(b, EmbeddedBroker)
            else "embedded broker (MQTT 3.1.1, no TLS/auth; install mosquitto for more)"
        )
        typer.echo(f"fedmq broker: {what} listening on {b.url}  (Ctrl-C stops)")

    try:
        broker.serve_forever(on_ready=ready)
    except KeyboardInterrupt:
        typer.echo("fedmq broker: stopped")


def register(app: typer.Typer) -> None:
    app.add_typer(broker_app, name="broker")
