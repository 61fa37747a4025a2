"""The production broker: TLS, passwords and the fleet ACL, proven against Mosquitto.

The ``secure`` fixture (conftest.py) runs ``broker_config/production.conf`` with this
test's certificates, passwords and ACL; provisioned.py says how "never arrives" is shown.
Client-id takeovers are in test_takeover.py, fleets in test_fleets.py, the services
themselves in test_production_services.py, the files for a broker started as root in
test_file_access.py; add-device in test_provision.py, the certificates in test_certs.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from provisioned import (
    MARKER,
    Secure,
    bounded,
    fedmq,
    seen,
    tls_refusal,
    until_marker,
)

from fedmq.config import BrokerConfig
from tools.broker import DEV_CONF, LOOPBACK
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
        (f"{model}/0", True),  # a chunk of a chunked model (fedmq.chunks)
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

        # The retained model is still the aggregator's, for a device that connects now;
        # so are the chunks of a chunked one, which a device may read too.
        async with secure.client("aggregator") as agg:
            await agg.publish(f"{model}/0", b"chunk-0", qos=1, retain=True)
        async with secure.client("dev-b") as late:
            await late.subscribe(f"{model}/#", qos=1)
            got = {
                (m.topic.value, m.payload, m.retain)
                for m in [await anext(late.messages) for _ in range(2)]
            }
            assert got == {(model, b"model-v1", True), (f"{model}/0", b"chunk-0", True)}

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
