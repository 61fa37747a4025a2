"""Helpers for the tests of the production broker (the fixture is in conftest.py).

The broker runs ``broker_config/production.conf`` with this test's paths written in by
:func:`tools.pki.provision.render_production_config`, certificates made by ``fedmq certs``
and passwords and the fleet ACL by ``fedmq broker add-device`` (the password each prints
is the one the clients log in with).

"Never arrives" is shown without sleeping: the subscriber is in place first, the forbidden
publishes go out, then a permitted marker; once the marker arrives, anything the broker
had let through would have arrived before it (one publisher's messages keep their order,
and a QoS 1 publish is acknowledged only after the broker has routed it).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest

from fedmq.config import BrokerConfig
from tools.broker import LOOPBACK, LocalBroker
from tools.cli import main
from tools.pki.provision import PRODUCTION_CONF, render_production_config

T = TypeVar("T")
SCENARIO_TIMEOUT = 20.0
FEDMQ = [sys.executable, "-c", "from tools.entry import main; main()"]
MARKER = b"marker"
# Who the fixture provisions: username -> role, in the test's fleet and in another one.
USERS = {"dev-a": "device", "dev-b": "device", "aggregator": "aggregator", "observer": "observer"}
OTHER_USERS = {"dev-y": "device", "agg-y": "aggregator", "obs-y": "observer"}
_TLS_KEYS = ("ca", "cert", "key")


@dataclass
class Ran:
    code: int
    out: str
    err: str


def fedmq(capsys: pytest.CaptureFixture[str], *args: object) -> Ran:
    """``fedmq ARGS`` through the real entry point (errors become one line and a status)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    out = capsys.readouterr()
    return Ran(code, out.out, out.err)


def assert_one_line_error(ran: Ran) -> None:
    assert ran.code not in (0, None), ran
    assert ran.out == ""
    lines = ran.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedmq: error: "), ran.err
    assert "Traceback" not in ran.err


@dataclass
class Secure:
    """A provisioned production broker: users of ``fleet`` and of ``other``."""

    broker: LocalBroker
    certs: Path
    fleet: str
    other: str
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.certs / "ca.crt"

    def config(self, user: str | None, password: str | None = None, **tls: Any) -> BrokerConfig:
        if user is not None and password is None:
            password = self.passwords[user]
        tls.setdefault("ca", self.ca)
        return BrokerConfig.from_url(
            f"mqtts://{LOOPBACK}:{self.broker.port}", username=user, password=password, **tls
        )

    def client(
        self, user: str | None, password: str | None = None, **options: Any
    ) -> aiomqtt.Client:
        """A client of ``user``; ``ca``/``cert``/``key`` go to TLS, the rest to aiomqtt."""
        tls = {k: options.pop(k) for k in _TLS_KEYS if k in options}
        cfg = self.config(user, password, **tls)
        return aiomqtt.Client(**cfg.client_kwargs(), timeout=10, **options)


def production_conf(tmp: Path, passwd: Path, acl: Path, **extra: Any) -> str:
    """production.conf with the paths of a test's certificates, password file and ACL."""
    certs = tmp / "certs"
    return render_production_config(
        PRODUCTION_CONF.read_text(encoding="utf-8"),
        cafile=certs / "ca.crt",
        certfile=certs / "broker.crt",
        keyfile=certs / "broker.key",
        password_file=passwd,
        acl_file=acl,
        **extra,
    )


def make_certs(capsys: pytest.CaptureFixture[str], certs: Path) -> None:
    """A fresh CA, and a server certificate for 127.0.0.1 and localhost."""
    assert fedmq(capsys, "certs", "init", "--dir", certs).code == 0
    issued = fedmq(
        capsys, "certs", "issue", "broker", "--server", "--dir", certs,
        "--host", "127.0.0.1", "--host", "localhost",
    )  # fmt: skip
    assert issued.code == 0, issued


def add_device(
    capsys: pytest.CaptureFixture[str], passwd: Path, user: str, role: str, fleet: str, *extra: str
) -> str:
    """``fedmq broker add-device`` (``extra``: more flags); the password it printed."""
    added = fedmq(
        capsys, "broker", "add-device", user, "--password-file", passwd,
        "--role", role, "--fleet", fleet, *extra,
    )  # fmt: skip
    assert added.code == 0, added
    return added.out.strip()


async def bounded(scenario: Awaitable[T]) -> T:
    """``scenario``, failed rather than hung if a message never comes."""
    return await asyncio.wait_for(scenario, SCENARIO_TIMEOUT)


async def until_marker(c: aiomqtt.Client, topic: str) -> list[aiomqtt.Message]:
    """Every message ``c`` receives, up to and including MARKER on ``topic``."""
    got = []
    async for message in c.messages:
        got.append(message)
        if message.topic.value == topic and message.payload == MARKER:
            return got
    raise AssertionError("the message stream ended")


async def tls_refusal(client: aiomqtt.Client) -> str:
    """The error of a connection attempt whose TLS handshake fails.

    paho-mqtt 2.2 leaves the socket of a failed handshake open (``_ssl_wrap_socket``
    raises past it); it is closed here, through the frames the error passed, so its
    ResourceWarning cannot fail a later test.
    """
    try:
        await bounded(client.__aenter__())
    except aiomqtt.MqttError as exc:
        cause = exc.__context__
        tb = cause.__traceback__ if cause is not None else None
        while tb is not None:
            for value in tb.tb_frame.f_locals.values():
                if isinstance(value, socket.socket):
                    value.close()
            tb = tb.tb_next
        return str(exc)
    await client.__aexit__(None, None, None)
    raise AssertionError("the TLS handshake succeeded")


def seen(messages: list[aiomqtt.Message]) -> list[tuple[str, bytes]]:
    return [(m.topic.value, bytes(m.payload)) for m in messages]  # type: ignore[arg-type]
