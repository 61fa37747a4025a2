"""The production broker: TLS, passwords and the per-device ACL, proven against Mosquitto.

The broker runs ``broker_config/production.conf`` and ``broker_config/acl`` themselves,
with this test's paths written in by :func:`tools.pki.provision.render_production_config`,
certificates made by ``fedmq certs`` and passwords by ``fedmq broker add-device`` (the
password each prints is the one the clients log in with).

"Never arrives" is shown without sleeping: the subscriber is in place first, the forbidden
publishes go out, then a permitted marker; once the marker arrives, anything the broker
had let through would have arrived before it (one publisher's messages keep their order,
and a QoS 1 publish is acknowledged only after the broker has routed it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmq.config import BrokerConfig
from tools.broker import DEV_CONF, LOOPBACK, LocalBroker
from tools.cli import main
from tools.pki import provision
from tools.pki.provision import ACL_FILE, PRODUCTION_CONF, render_production_config

T = TypeVar("T")
SCENARIO_TIMEOUT = 20.0
FEDMQ = [sys.executable, "-c", "from tools.entry import main; main()"]
USERS = {"dev-a": "device", "dev-b": "device", "aggregator": "aggregator", "observer": "observer"}
MARKER = b"marker"


# --- running the CLI in-process -----------------------------------------------------


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


# --- a provisioned production broker ------------------------------------------------


@dataclass
class Secure:
    broker: LocalBroker
    certs: Path
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

    def client(self, user: str | None, password: str | None = None, **tls: Any) -> aiomqtt.Client:
        return aiomqtt.Client(**self.config(user, password, **tls).client_kwargs(), timeout=10)


@pytest.fixture
def secure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], new_broker: Callable[..., LocalBroker]
) -> Secure:
    """Mosquitto on production.conf + acl, with a fresh CA, server cert and four users."""
    certs, passwd = tmp_path / "certs", tmp_path / "passwd"
    conf = tmp_path / "production.conf"
    conf.write_text(
        render_production_config(
            PRODUCTION_CONF.read_text(encoding="utf-8"),
            cafile=certs / "ca.crt",
            certfile=certs / "broker.crt",
            keyfile=certs / "broker.key",
            password_file=passwd,
            acl_file=ACL_FILE,
        )
    )
    # Made first: a missing Mosquitto skips (or, under CI, fails) before provisioning.
    broker = new_broker("mosquitto", config=conf, workdir=tmp_path)
    assert fedmq(capsys, "certs", "init", "--dir", certs).code == 0
    issued = fedmq(
        capsys, "certs", "issue", "broker", "--server", "--dir", certs,
        "--host", "127.0.0.1", "--host", "localhost",
    )  # fmt: skip
    assert issued.code == 0, issued
    out = Secure(broker, certs)
    for user, role in USERS.items():
        added = fedmq(
            capsys, "broker", "add-device", user, "--password-file", passwd, "--role", role
        )
        assert added.code == 0, added
        out.passwords[user] = added.out.strip()
    broker.start()
    return out


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


# --- who may connect ----------------------------------------------------------------


@pytest.mark.broker
async def test_anonymous_and_wrong_passwords_are_refused(secure: Secure) -> None:
    refused = {
        "anonymous": secure.client(None),
        "wrong password": secure.client("dev-a", "not-the-password"),
        "another user's password": secure.client("dev-a", secure.passwords["dev-b"]),
        "unknown user": secure.client("dev-z", secure.passwords["dev-a"]),
    }
    for what, client in refused.items():
        with pytest.raises(aiomqtt.MqttCodeError) as exc:
            await bounded(client.__aenter__())
        # MQTT 3.1.1 CONNACK 4 "bad username or password" or 5 "not authorised".
        code = getattr(exc.value.rc, "value", exc.value.rc)
        assert code in (4, 5, 134, 135), f"{what}: {exc.value}"
    async with secure.client("dev-a"):  # and the right password gets in
        pass


@pytest.mark.broker
async def test_tls_needs_the_fleet_ca(secure: Secure, tmp_path: Path, capsys: Any) -> None:
    # The system's trust store does not know the fleet's private CA.
    cfg = BrokerConfig.from_url(
        f"mqtts://{LOOPBACK}:{secure.broker.port}",
        username="dev-a",
        password=secure.passwords["dev-a"],
    )
    refused = await tls_refusal(aiomqtt.Client(**cfg.client_kwargs(), timeout=10))
    assert "CERTIFICATE_VERIFY_FAILED" in refused
    # Nor does another CA, even one made the same way.
    assert fedmq(capsys, "certs", "init", "--dir", tmp_path / "other").code == 0
    other = secure.client("dev-a", ca=tmp_path / "other" / "ca.crt")
    assert "CERTIFICATE_VERIFY_FAILED" in await tls_refusal(other)
    # The fleet's CA verifies the broker, by IP address and by name (both in its SAN).
    for host in (LOOPBACK, "localhost"):
        cfg = BrokerConfig.from_url(
            f"mqtts://{host}:{secure.broker.port}",
            username="dev-a",
            password=secure.passwords["dev-a"],
            ca=secure.ca,
        )
        async with aiomqtt.Client(**cfg.client_kwargs(), timeout=10) as c:
            await c.publish("fl/tls/updates/dev-a", b"over tls", qos=1)


# --- what each user may do ----------------------------------------------------------


@pytest.mark.broker
async def test_a_device_update_reaches_the_aggregator(secure: Secure, fleet: str) -> None:
    async def scenario() -> None:
        async with secure.client("aggregator") as agg, secure.client("dev-a") as dev:
            await agg.subscribe(f"$share/fedmq/fl/{fleet}/updates/+", qos=1)
            await agg.subscribe(f"fl/{fleet}/devices/+/status", qos=1)
            await dev.publish(f"fl/{fleet}/devices/dev-a/status", b"online", qos=1, retain=True)
            await dev.publish(f"fl/{fleet}/updates/dev-a", MARKER, qos=1)
            got = await until_marker(agg, f"fl/{fleet}/updates/dev-a")
            assert seen(got) == [
                (f"fl/{fleet}/devices/dev-a/status", b"online"),
                (f"fl/{fleet}/updates/dev-a", MARKER),
            ]

    await bounded(scenario())


@pytest.mark.broker
async def test_a_device_cannot_write_as_another_or_touch_the_model(
    secure: Secure, fleet: str
) -> None:
    model = f"fl/{fleet}/model/global"
    forged = [
        (f"fl/{fleet}/updates/dev-b", False),  # another device's update
        (f"fl/{fleet}/devices/dev-b/status", True),
        (f"fl/{fleet}/stats/dev-b", False),
        (model, True),  # the aggregator's topics
        (f"fl/{fleet}/model/onnx", True),
        (f"fl/{fleet}/aggregator/status", True),
        (f"fl/{fleet}/aggregator/devices/dev-a", True),
    ]

    async def scenario() -> None:
        async with (
            secure.client("aggregator") as agg,
            secure.client("observer") as obs,
            secure.client("dev-a") as dev,
        ):
            await agg.publish(model, b"model-v1", qos=1, retain=True)
            await agg.subscribe(f"fl/{fleet}/updates/+", qos=1)
            await agg.subscribe(f"fl/{fleet}/devices/+/status", qos=1)
            await obs.subscribe(f"fl/{fleet}/#", qos=1)
            for topic, retain in forged:
                await dev.publish(topic, b"forged", qos=1, retain=retain)
            await dev.publish(f"fl/{fleet}/updates/dev-a", MARKER, qos=1)

            marker = (f"fl/{fleet}/updates/dev-a", MARKER)
            assert seen(await until_marker(agg, marker[0])) == [marker]
            # The observer reads everything: the retained model, then the marker alone.
            assert seen(await until_marker(obs, marker[0])) == [(model, b"model-v1"), marker]

        # The retained model is still the aggregator's, for a device that connects now.
        async with secure.client("dev-b") as late:
            await late.subscribe(model, qos=1)
            message = await anext(late.messages)
            assert (message.topic.value, message.payload, message.retain) == (
                model,
                b"model-v1",
                True,
            )

    await bounded(scenario())


@pytest.mark.broker
async def test_a_device_reads_the_model_but_not_other_devices(secure: Secure, fleet: str) -> None:
    model = f"fl/{fleet}/model/global"

    async def scenario() -> None:
        async with (
            secure.client("aggregator") as agg,
            secure.client("dev-a") as a,
            secure.client("dev-b") as b,
        ):
            for topic in ("updates/+", "devices/+/status", "stats/+", "aggregator/devices/+"):
                await a.subscribe(f"fl/{fleet}/{topic}", qos=1)
            await a.subscribe(model, qos=1)
            await b.publish(f"fl/{fleet}/updates/dev-b", b"b's update", qos=1)
            await b.publish(f"fl/{fleet}/devices/dev-b/status", b"b's status", qos=1)
            await b.publish(f"fl/{fleet}/stats/dev-b", b"b's stats", qos=1)
            await agg.publish(f"fl/{fleet}/aggregator/devices/dev-b", b"b's ledger", qos=1)
            await agg.publish(f"fl/{fleet}/aggregator/devices/dev-a", b"a's ledger", qos=1)
            await agg.publish(model, MARKER, qos=1)
            assert seen(await until_marker(a, model)) == [
                (f"fl/{fleet}/aggregator/devices/dev-a", b"a's ledger"),
                (model, MARKER),
            ]

    await bounded(scenario())


@pytest.mark.broker
async def test_the_observer_reads_but_cannot_write(secure: Secure, fleet: str) -> None:
    async def scenario() -> None:
        async with (
            secure.client("aggregator") as agg,
            secure.client("observer") as obs,
            secure.client("dev-a") as dev,
        ):
            await agg.subscribe(f"fl/{fleet}/updates/+", qos=1)
            await obs.subscribe(f"fl/{fleet}/#", qos=1)
            # As a device named "observer" (the patterns' %u) and as the aggregator.
            await obs.publish(f"fl/{fleet}/updates/observer", b"forged", qos=1)
            await obs.publish(f"fl/{fleet}/model/global", b"forged", qos=1)
            await dev.publish(f"fl/{fleet}/updates/dev-a", MARKER, qos=1)
            marker = (f"fl/{fleet}/updates/dev-a", MARKER)
            assert seen(await until_marker(agg, marker[0])) == [marker]
            assert seen(await until_marker(obs, marker[0])) == [marker]

    await bounded(scenario())


# --- the config files ---------------------------------------------------------------


def _directives(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.split() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_production_conf_has_only_a_tls_listener_and_no_anonymous_access() -> None:
    conf = _directives(PRODUCTION_CONF)
    keys = [words[0] for words in conf]
    assert [w for w in conf if w[0] == "listener"] == [["listener", "8883"]]
    after_listener = keys[keys.index("listener") :]
    for key in ("cafile", "certfile", "keyfile", "tls_version"):
        assert key in after_listener, f"{key} must follow the listener it secures"
    settings = {words[0]: words[1:] for words in conf}
    assert settings["tls_version"] == ["tlsv1.2"]
    assert settings["allow_anonymous"] == ["false"]
    assert settings["per_listener_settings"] == ["false"]
    assert "password_file" in settings and "acl_file" in settings
    assert settings["persistence"] == ["true"]
    # The same limits as the development broker.
    dev = {words[0]: words[1:] for words in _directives(DEV_CONF)}
    for key in (
        "message_size_limit",
        "max_inflight_messages",
        "max_queued_messages",
        "persistent_client_expiration",
        "autosave_interval",
    ):
        assert settings[key] == dev[key], key


def test_render_production_config_writes_paths_and_rejects_bad_ones(tmp_path: Path) -> None:
    template = PRODUCTION_CONF.read_text(encoding="utf-8")
    paths = {
        "cafile": tmp_path / "ca.crt",
        "certfile": tmp_path / "b.crt",
        "keyfile": tmp_path / "b.key",
        "password_file": tmp_path / "passwd",
    }
    text = render_production_config(
        template, **paths, port=18883, bind=LOOPBACK, persistence_dir=tmp_path
    )
    lines = text.splitlines()
    for key, value in paths.items():
        assert f"{key} {value}" in lines
    assert f"acl_file {ACL_FILE}" in lines
    assert f"listener 18883 {LOOPBACK}" in lines
    assert f"persistence_location {tmp_path}{os.sep}" in lines
    assert len(lines) == len(template.splitlines())

    from fedmq.errors import ConfigError

    with pytest.raises(ConfigError, match="whitespace"):
        render_production_config(template, **{**paths, "keyfile": tmp_path / "a b.key"})
    with pytest.raises(ConfigError, match="whitespace"):
        render_production_config(template, **{**paths, "cafile": f"{tmp_path}/x\nlistener 1883"})
    without_acl = "\n".join(ln for ln in template.splitlines() if not ln.startswith("acl_file"))
    with pytest.raises(ConfigError, match=r"acl_file \(0x\)"):
        render_production_config(without_acl, **paths)


# --- fedmq broker add-device --------------------------------------------------------


def test_add_device_prints_the_password_once_and_stores_only_a_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "passwd"
    ran = fedmq(capsys, "broker", "add-device", "pi-001", "--password-file", passwd)
    assert ran.code == 0, ran
    password = ran.out.strip()
    assert ran.out == password + "\n"  # stdout is the password alone: PW=$(fedmq ...)
    assert len(password) >= 32
    assert "shown once" in ran.err and password not in ran.err
    text = passwd.read_text()
    assert password not in text
    [line] = text.splitlines()
    user, _, hashed = line.partition(":")
    assert user == "pi-001" and hashed.startswith("$7$")  # PBKDF2-SHA512, salted
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
    # A second device goes into the same file, and gets a different password.
    again = fedmq(capsys, "broker", "add-device", "pi-002", "--password-file", passwd)
    assert again.code == 0 and again.out.strip() != password
    assert provision.usernames(passwd) == {"pi-001", "pi-002"}


def test_add_device_refuses_a_known_id_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "passwd"
    first = fedmq(capsys, "broker", "add-device", "pi-001", "--password-file", passwd).out
    before = passwd.read_text()
    ran = fedmq(capsys, "broker", "add-device", "pi-001", "--password-file", passwd)
    assert_one_line_error(ran)
    assert "--force" in ran.err
    assert passwd.read_text() == before
    rotated = fedmq(capsys, "broker", "add-device", "pi-001", "--password-file", passwd, "--force")
    assert rotated.code == 0 and rotated.out.strip() not in ("", first.strip())
    [line] = passwd.read_text().splitlines()
    assert line.startswith("pi-001:") and line != before.strip()


@pytest.mark.parametrize(
    "args",
    [
        ["bad/id"],
        ["wild+card"],
        ["#"],
        ["$SYS"],
        [""],
        ["has:colon"],
        ["aggregator"],  # a role's username is not a device id
        ["observer"],
        ["agg-1", "--role", "aggregator"],  # the ACL knows the aggregator by its name
        ["pi-1", "--role", "admin"],
    ],
)
def test_add_device_bad_input_is_one_line(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "passwd"
    assert_one_line_error(fedmq(capsys, "broker", "add-device", *args, "--password-file", passwd))
    assert not passwd.exists()


def test_add_device_error_from_the_console_script(tmp_path: Path) -> None:
    done = subprocess.run(
        [*FEDMQ, "broker", "add-device", "bad/id"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 4  # TopicError
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "passwd").exists()


def test_add_device_without_mosquitto_passwd(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provision, "find_mosquitto_passwd", lambda: None)
    passwd = tmp_path / "passwd"
    ran = fedmq(capsys, "broker", "add-device", "pi-001", "--password-file", passwd)
    assert_one_line_error(ran)
    assert ran.code == 8 and "mosquitto_passwd" in ran.err  # BrokerError
    assert not passwd.exists()


def test_add_device_into_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "no" / "such" / "passwd"
    assert_one_line_error(fedmq(capsys, "broker", "add-device", "pi-1", "--password-file", passwd))


# --- fedmq certs --------------------------------------------------------------------


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certs_init_makes_a_ten_year_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = tmp_path / "certs"
    assert fedmq(capsys, "certs", "init", "--dir", certs).code == 0
    ca = _cert(certs / "ca.crt")
    assert _mode(certs / "ca.key") == 0o600
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    years = (ca.not_valid_after_utc - ca.not_valid_before_utc) / dt.timedelta(days=365)
    assert 9.9 < years < 10.1
    key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    assert key.public_key() == ca.public_key()


def test_certs_issue_a_server_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    fedmq(capsys, "certs", "init", "--dir", certs)
    ran = fedmq(
        capsys, "certs", "issue", "broker", "--server", "--dir", certs,
        "--host", "127.0.0.1", "--host", "mqtt.example.org", "--host", "::1",
    )  # fmt: skip
    assert ran.code == 0, ran
    ca, cert = _cert(certs / "ca.crt"), _cert(certs / "broker.crt")
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert _mode(certs / "broker.key") == 0o600
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.example.org"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key((certs / "broker.key").read_bytes(), None)
    assert key.public_key() == cert.public_key()


def test_certs_issue_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = tmp_path / "certs"
    fedmq(capsys, "certs", "init", "--dir", certs)
    # A server certificate names this machine unless told otherwise.
    assert fedmq(capsys, "certs", "issue", "local", "--server", "--dir", certs).code == 0
    san = _cert(certs / "local.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    # Without --server: a client certificate named after the device.
    assert fedmq(capsys, "certs", "issue", "pi-001", "--dir", certs).code == 0
    client = _cert(certs / "pi-001.crt")
    client.verify_directly_issued_by(_cert(certs / "ca.crt"))
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pi-001"
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _mode(certs / "pi-001.key") == 0o600


def test_certs_refuse_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    fedmq(capsys, "certs", "init", "--dir", certs)
    fedmq(capsys, "certs", "issue", "pi-001", "--dir", certs)
    before = {p.name: p.read_bytes() for p in certs.iterdir()}
    assert_one_line_error(fedmq(capsys, "certs", "init", "--dir", certs))
    assert_one_line_error(fedmq(capsys, "certs", "issue", "pi-001", "--dir", certs))
    assert {p.name: p.read_bytes() for p in certs.iterdir()} == before
    assert fedmq(capsys, "certs", "init", "--dir", certs, "--force").code == 0
    assert (certs / "ca.key").read_bytes() != before["ca.key"]
    assert _mode(certs / "ca.key") == 0o600


@pytest.mark.parametrize(
    ("with_ca", "args"),
    [
        (False, ["issue", "broker", "--server"]),  # before `certs init`
        (True, ["issue", "../escape"]),
        (True, ["issue", "ca"]),  # the CA's own files
        (True, ["issue", "pi-1", "--host", "10.0.0.1"]),  # hosts are for servers
        (True, ["issue", "broker", "--server", "--host", "not a host"]),
        (True, ["issue", "broker", "--days", "0"]),
        (False, ["init", "--days", "0"]),
    ],
)
def test_certs_bad_input_is_one_line(
    with_ca: bool, args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    if with_ca:
        assert fedmq(capsys, "certs", "init", "--dir", certs).code == 0
    before = sorted(certs.glob("*")) if certs.exists() else []
    ran = fedmq(capsys, "certs", *args, "--dir", certs)
    assert_one_line_error(ran)
    if args[0] == "issue" and not with_ca:
        assert "fedmq certs init" in ran.err
    assert (sorted(certs.glob("*")) if certs.exists() else []) == before
