"""``fedmq certs``: a private CA, and the broker's and devices' certificates."""

from __future__ import annotations

from pathlib import Path

import typer

certs_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="A private CA for the broker's TLS listener: `init` once, then `issue`.\n\n"
    "Example: `fedmq certs init --dir certs`",
)

_DIR_HELP = "Directory of the CA and the certificates (created if missing)."


@certs_app.command("init")
def init_command(
    directory: Path = typer.Option(Path("certs"), "--dir", help=_DIR_HELP),
    days: int = typer.Option(3650, help="Validity in days (default 10 years)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing CA."),
) -> None:
    """Create a CA: ca.key (mode 0600) and a self-signed ca.crt.

    Give ca.crt to the broker (`cafile`) and to every client. ca.key signs every
    certificate: keep it off the broker and the devices. Replacing the CA (--force)
    invalidates every certificate it issued.

    Example: `fedmq certs init --dir certs --days 3650`
    """
    from tools.pki.certs import init_ca

    out = init_ca(directory, days=days, force=force)
    typer.echo(f"CA certificate: {out.cert}")
    typer.echo(f"CA key:         {out.key}  (mode 0600; keep it offline)")


@certs_app.command("issue")
def issue_command(
    name: str = typer.Argument(..., help="File name and common name, e.g. broker or pi-001."),
    directory: Path = typer.Option(Path("certs"), "--dir", help=_DIR_HELP),
    server: bool = typer.Option(
        False, "--server", help="A TLS server (broker) certificate; default: a client one."
    ),
    host: list[str] = typer.Option(
        None,
        "--host",
        help="DNS name or IP address clients connect to (repeatable; --server only; "
        "default 127.0.0.1 and localhost).",
    ),
    days: int = typer.Option(825, help="Validity in days (never past the CA's)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing NAME.crt/NAME.key."),
) -> None:
    """Issue NAME.crt and NAME.key (mode 0600), signed by the CA in --dir.

    For the broker: `fedmq certs issue broker --server --host mqtt.example.org`; then set
    its `certfile` and `keyfile` to them. A client certificate is needed only if the
    broker sets `require_certificate true`.

    Example: `fedmq certs issue broker --server --dir certs --host mqtt.example.org`
    """
    from tools.pki.certs import issue

    out = issue(directory, name, server=server, hosts=host or (), days=days, force=force)
    typer.echo(f"{'server' if server else 'client'} certificate: {out.cert}")
    typer.echo(f"key: {out.key}  (mode 0600)")


def register(app: typer.Typer) -> None:
    app.add_typer(certs_app, name="certs")
