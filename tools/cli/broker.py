"""``fedmq broker``: run a development broker on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fedmq.errors import ConfigError
from fedmq.logs import LogSettings
from fedmq.settings import given_flags
from tools.cli.options import with_settings

broker_app = typer.Typer(
    no_args_is_help=False, invoke_without_command=True, rich_markup_mode="markdown"
)


@broker_app.callback()
@with_settings(LogSettings, env=False)
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
    settings: Any = None,
) -> None:
    """Run a development broker on 127.0.0.1 until Ctrl-C or SIGTERM.

    With Mosquitto installed this runs `mosquitto -c` with broker_config/dev.conf
    (loopback only, anonymous, persistence on). Without it, fedmq's embedded broker
    runs in-process instead: MQTT 3.1.1, QoS 0/1, retained messages, last wills and
    persistent sessions held in memory; no TLS, no passwords, no QoS 2. Neither is
    for a real fleet: see broker_config/production.conf.

    Example: `fedmq broker --port 1883 --kind mosquitto`
    """
    if ctx.invoked_subcommand is not None:
        return
    LogSettings(**given_flags((LogSettings,), settings)).configure()
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
            f"mosquitto ({config or DEV_CONF})"
            if not isinstance(b, EmbeddedBroker)
            else "embedded broker (MQTT 3.1.1, no TLS/auth; install mosquitto for more)"
        )
        typer.echo(f"fedmq broker: {what} listening on {b.url}  (Ctrl-C stops)")

    try:
        broker.serve_forever(on_ready=ready)
    except KeyboardInterrupt:
        typer.echo("fedmq broker: stopped")


@broker_app.command("add-device")
def add_device_command(
    device_id: str = typer.Argument(
        ...,
        metavar="ID",
        help="The broker username: a device's id, or an aggregator's or observer's name.",
    ),
    fleet: str = typer.Option(
        "default", help="The one fleet (fl/FLEET/...) this user may use; no other."
    ),
    password_file: Path = typer.Option(
        Path("passwd"),
        "--password-file",
        help="Mosquitto password file (production.conf `password_file`); created if missing.",
    ),
    acl_file: Path = typer.Option(
        None,
        "--acl-file",
        help="Mosquitto ACL (production.conf `acl_file`); default: `acl` next to the "
        "password file; created from broker_config/acl if missing.",
    ),
    role: str = typer.Option(
        "device",
        help="device | aggregator | observer; broker_config/acl says what each may do.",
    ),
    group: str = typer.Option(
        None,
        help="Group that may read both files (mode 0640), e.g. the one Mosquitto runs as; "
        "default: `mosquitto` when run as root, else none (mode 0600).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Give an ID already in the file a new password (rotate it)."
    ),
) -> None:
    """Give a device (or an aggregator, or an observer) of one fleet a new random password.

    The password is printed once, alone on stdout (`PW=$(fedmq broker add-device pi-001)`
    works); the password file gets only a salted hash, written by mosquitto_passwd, and
    the ACL the user's rights in its fleet. Mosquitto reads both at start-up and on SIGHUP.

    Example: `fedmq broker add-device pi-001 --fleet farm --password-file /etc/mosquitto/passwd`
    """
    from tools.pki.provision import add_user, describe_access

    acl_file = acl_file if acl_file is not None else password_file.with_name("acl")
    access = {"fleet": fleet, "acl_file": acl_file, "role": role, "group": group}
    password = add_user(password_file, device_id, force=force, **access)
    what = "new password of" if force else "password for"
    typer.echo(
        f"fedmq broker: {what} {role} {device_id!r} of fleet {fleet!r} in {password_file} "
        f"({describe_access(password_file)}; rights in {acl_file}), shown once and stored "
        "nowhere else (the file holds only a hash):",
        err=True,
    )
    typer.echo(password)


def register(app: typer.Typer) -> None:
    app.add_typer(broker_app, name="broker")
