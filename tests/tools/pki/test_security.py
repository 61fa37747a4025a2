"""The production broker: TLS, passwords and the fleet ACL, proven against Mosquitto.

The ``secure`` fixture (conftest.py) runs ``broker_config/production.conf`` with this
test's certificates, passwords and ACL; provisioned.py says how "never arrives" is shown.
Client-id takeovers are in test_takeover.py, fleets in test_fleets.py, the ownership of
the files for a broker started as root in test_file_access.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from provisioned import (
    FEDMQ,
    MARKER,
    Secure,
    assert_one_line_error,
    bounded,
    fedmq,
    seen,
    tls_refusal,
    until_marker,
)

from fedmq.config import BrokerConfig
from tools.broker import DEV_CONF, LOOPBACK
from tools.pki import acl, provision
from tools.pki.provision import ACL_FILE, PRODUCTION_CONF, render_production_config

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
            await c.publish(f"fl/{secure.fleet}/updates/dev-a", b"over tls", qos=1)


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
            # As a device named "observer" and as the aggregator.
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
    # use_username_as_clientid is read per listener: before it, it would set nothing.
    for key in ("cafile", "certfile", "keyfile", "tls_version", "use_username_as_clientid"):
        assert key in after_listener, f"{key} must follow the listener it secures"
    settings = {words[0]: words[1:] for words in conf}
    assert settings["use_username_as_clientid"] == ["true"]
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
    # Owner only, or (as root) readable by the group Mosquitto runs as: test_file_access.py.
    mode = 0o600 if provision.reader_group(None) is None else 0o640
    assert stat.S_IMODE(passwd.stat().st_mode) == mode
    # Its rights, in the default fleet, in the ACL next to the password file.
    rules = (tmp_path / "acl").read_text()
    assert rules.startswith(ACL_FILE.read_text()) and password not in rules
    assert acl.grants(rules) == {"pi-001": ("device", "default")}
    assert stat.S_IMODE((tmp_path / "acl").stat().st_mode) == mode
    # A second device goes into the same files, and gets a different password.
    again = fedmq(
        capsys, "broker", "add-device", "pi-002", "--password-file", passwd, "--fleet", "farm"
    )
    assert again.code == 0 and again.out.strip() != password
    assert provision.usernames(passwd) == {"pi-001", "pi-002"}
    assert acl.grants((tmp_path / "acl").read_text()) == {
        "pi-001": ("device", "default"),
        "pi-002": ("device", "farm"),
    }


def test_add_device_refuses_a_known_id_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd, rules = tmp_path / "passwd", tmp_path / "acl"
    add = ["broker", "add-device", "pi-001", "--password-file", passwd]
    first = fedmq(capsys, *add).out
    before = passwd.read_text(), rules.read_text()
    ran = fedmq(capsys, *add, "--fleet", "farm")
    assert_one_line_error(ran)
    assert "--force" in ran.err
    assert (passwd.read_text(), rules.read_text()) == before
    # Rotated, and moved to another fleet: its old block goes, it is in one fleet only.
    rotated = fedmq(capsys, *add, "--force", "--fleet", "farm")
    assert rotated.code == 0 and rotated.out.strip() not in ("", first.strip())
    [line] = passwd.read_text().splitlines()
    assert line.startswith("pi-001:") and line != before[0].strip()
    assert acl.grants(rules.read_text()) == {"pi-001": ("device", "farm")}
    assert "fl/default/" not in rules.read_text()


def test_add_device_keeps_other_acl_lines_and_refuses_patterns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd, rules = tmp_path / "passwd", tmp_path / "acl"
    by_hand = "# ours\nuser ops\ntopic read fl/farm/#\n"
    rules.write_text(by_hand)
    assert fedmq(capsys, "broker", "add-device", "pi-1", "--password-file", passwd).code == 0
    text = rules.read_text()
    assert text.startswith(by_hand) and acl.grants(text) == {"pi-1": ("device", "default")}
    # A pattern grants every user the same topics in every fleet: refused, nothing changed.
    rules.write_text(ACL_FILE.read_text() + "pattern write fl/+/updates/%u\n")
    before = passwd.read_text(), rules.read_text()
    ran = fedmq(capsys, "broker", "add-device", "pi-2", "--password-file", passwd)
    assert_one_line_error(ran)
    assert "pattern" in ran.err
    assert (passwd.read_text(), rules.read_text()) == before


@pytest.mark.parametrize(
    "args",
    [
        ["bad/id"],
        ["wild+card"],
        ["#"],
        ["$SYS"],
        [""],
        ["has:colon"],
        ["pi-1", "--role", "admin"],
        ["pi-1", "--fleet", ""],
        ["pi-1", "--fleet", "a/b"],  # a fleet is one topic level
        ["pi-1", "--fleet", "+"],
        ["pi-1", "--fleet", "#"],
        ["pi-1", "--fleet", "two words"],  # would split the ACL line
        ["pi-1", "--group", "no-such-group-here"],
    ],
)
def test_add_device_bad_input_is_one_line(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "passwd"
    assert_one_line_error(fedmq(capsys, "broker", "add-device", *args, "--password-file", passwd))
    assert list(tmp_path.iterdir()) == []  # neither passwd nor acl


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
