"""Settings declared once: precedence, conversion, unknown keys, masking, passwords, docs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedmq.config import BrokerSettings
from fedmq.errors import ConfigError
from fedmq.settings import MASK, Schema, Setting, setting, settings_of
from tools import config_docs


@dataclass(frozen=True)
class Sample:
    """A section for these tests."""

    name: str = setting(help="A required string.")
    count: int = setting(3, help="An integer.")
    ratio: float = setting(0.5, help="A number.")
    on: bool = setting(False, help="A boolean.")
    where: Path | None = setting(None, help="A path.")
    mode: str = setting("a", help="A choice.", choices=("a", "b"))
    token: str | None = setting(None, help="A secret.", secret=True, sources=("env",))


SCHEMA = Schema("agent", Sample)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fedmq.toml"
    path.write_text(text)
    return path


def test_precedence_is_flag_then_env_then_file_then_default(tmp_path):
    path = toml(tmp_path, "[agent]\ncount = 4\nratio = 1.5\non = true\n")
    env = {"FEDMQ_COUNT": "5", "FEDMQ_RATIO": "2.5"}
    s = SCHEMA.resolve(path, env=env, flags={"count": "6", "ratio": None})
    assert (s["count"].value, s["count"].source) == (6, "flag")
    assert (s["ratio"].value, s["ratio"].source) == (2.5, "env")
    assert (s["on"].value, s["on"].source) == (True, "file")
    assert (s["mode"].value, s["mode"].source) == ("a", "default")
    assert s.given(Sample) == {"count": 6, "ratio": 2.5, "on": True}


def test_an_empty_environment_variable_is_unset():
    assert SCHEMA.resolve(env={"FEDMQ_COUNT": ""})["count"].source == "default"


@pytest.mark.parametrize(
    ("text", "needle", "reason"),
    [
        ("[agnet]\nname = 'x'\n", "[agnet] (did you mean [agent]?)", "unknown_table"),
        ("[agent]\ncuont = 1\n", "'cuont' in [agent] (did you mean 'count'?)", "unknown_setting"),
        ("[agent.extra]\ncount = 1\n", "[agent.extra]", "unknown_table"),
        ("count = 1\n", "outside any table", "unknown_setting"),
        ("[agent]\ncount = '7'\n", "must be an integer, got '7'", "bad_setting"),
        ("[agent]\ncount = 1.5\n", "must be an integer", "bad_setting"),
        ("[agent]\non = 1\n", "must be a boolean", "bad_setting"),
        ("[agent]\nmode = 'c'\n", "must be one of a, b", "bad_setting"),
        ("[agent]\ntoken = 'x'\n", "use $FEDMQ_TOKEN", "secret_in_file"),
        ("[agent\n", "not valid TOML", "bad_toml"),
    ],
)
def test_bad_files_are_one_clear_error(tmp_path, text, needle, reason):
    with pytest.raises(ConfigError) as exc:
        SCHEMA.resolve(toml(tmp_path, text), env={})
    assert needle in str(exc.value) and exc.value.reason == reason
    assert "\n" not in str(exc.value)


def test_the_other_services_table_is_not_an_error(tmp_path):
    path = toml(tmp_path, "[agent]\nname = 'x'\n[aggregator]\nanything = 1\n")
    assert SCHEMA.resolve(path, env={})["name"].value == "x"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"FEDMQ_COUNT": "abc"}, "$FEDMQ_COUNT must be an integer, got 'abc'"),
        ({"FEDMQ_RATIO": "fast"}, "$FEDMQ_RATIO must be a number"),
        ({"FEDMQ_ON": "maybe"}, "$FEDMQ_ON must be a boolean"),
        ({"FEDMQ_MODE": "z"}, "$FEDMQ_MODE must be one of a, b"),
    ],
)
def test_bad_environment_values_are_errors(env, needle):
    with pytest.raises(ConfigError, match="bad_setting") as exc:
        SCHEMA.resolve(env=env)
    assert needle in str(exc.value)


def test_bad_flag_values_are_errors_too():
    with pytest.raises(ConfigError, match=r"--count must be an integer"):
        SCHEMA.resolve(env={}, flags={"count": "x"})
    with pytest.raises(TypeError):  # a flag that is not a setting is a programming error
        SCHEMA.resolve(env={}, flags={"nope": "1"})


def test_a_required_setting_names_all_three_spellings():
    with pytest.raises(ConfigError, match="missing_setting") as exc:
        SCHEMA.resolve(env={}).require()
    assert "--name, $FEDMQ_NAME or name = ... in the [agent] table" in str(exc.value)


def test_print_config_shape_and_masking():
    s = SCHEMA.resolve(env={"FEDMQ_TOKEN": "hunter2"}, flags={"where": "/tmp/x"})
    text = s.to_json()
    assert "hunter2" not in text
    out = json.loads(text)
    assert set(out) == {x.name for x in settings_of(Sample)}
    assert out["token"] == {"value": MASK, "source": "env"}
    assert out["where"] == {"value": "/tmp/x", "source": "flag"}
    assert out["count"] == {"value": 3, "source": "default"}
    assert all(set(v) == {"value", "source"} for v in out.values())


def test_secrets_stay_out_of_repr():
    assert "hunter2" not in repr(Sample(name="n", token="hunter2"))
    assert "hunter2" not in repr(BrokerSettings(broker="mqtt://h", password="hunter2"))


def _setting(typ: type) -> Setting:
    return Setting(name="x", type=typ, default=None, help="", section="T")


def _env_text(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


@given(
    st.one_of(
        st.integers(),
        st.floats(allow_nan=False),
        st.booleans(),
        st.text(min_size=1).filter(lambda t: "\x00" not in t),
    )
)
def test_environment_values_round_trip(value):
    typ = type(value)
    back = _setting(typ).parse(_env_text(value), "$FEDMQ_X")
    assert back == value and type(back) is typ


@given(st.text())
def test_any_environment_string_converts_or_is_a_config_error(raw):
    for typ in (int, float, bool, Path):
        try:
            value = _setting(typ).parse(raw, "$FEDMQ_X")
        except ConfigError:
            continue
        assert isinstance(value, typ)
        if typ is float:
            assert isinstance(value, float) and (math.isfinite(value) or "n" in raw.lower())


# Passwords: only from a file or the environment, never over plain mqtt:// to a remote host.


def test_password_from_a_file_or_the_environment(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    assert BrokerSettings(broker="mqtts://h", password_file=pw).connect().password == "s3cret"
    assert BrokerSettings(broker="mqtts://h", password="s3cret").connect().password == "s3cret"
    with pytest.raises(ConfigError, match="two_passwords"):
        BrokerSettings(broker="mqtts://h", password="a", password_file=pw).connect()
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        BrokerSettings(broker="mqtts://h", password_file=tmp_path / "empty").connect()
    with pytest.raises(ConfigError, match="cannot read"):
        BrokerSettings(broker="mqtts://h", password_file=tmp_path / "missing").connect()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.5.6.7"])
def test_plain_mqtt_with_a_password_is_fine_on_loopback(host):
    cfg = BrokerSettings(broker=f"mqtt://{host}:1883", password="pw").connect()
    assert cfg.password == "pw" and not cfg.tls


def test_plain_mqtt_with_a_password_to_another_host_needs_insecure():
    with pytest.raises(ConfigError, match="insecure_password") as exc:
        BrokerSettings(broker="mqtt://broker.lan", password="pw").connect()
    assert "pw" not in str(exc.value).replace("password", "")
    assert BrokerSettings(broker="mqtt://broker.lan", password="pw", insecure=True).connect()
    assert BrokerSettings(broker="mqtt://broker.lan").connect().password is None  # no password
    assert BrokerSettings(broker="mqtts://broker.lan", password="pw").connect().tls


def test_a_password_in_the_url_is_refused_and_never_shown():
    with pytest.raises(ConfigError, match="password_in_url") as exc:
        BrokerSettings(broker="mqtts://dev:hunter2@h").connect()
    assert "hunter2" not in str(exc.value)
    s = Schema("agent", BrokerSettings).resolve(env={"FEDMQ_BROKER": "mqtts://dev:hunter2@h"})
    assert "hunter2" not in s.to_json()


def test_docs_config_md_is_generated_from_the_declarations():
    current = config_docs.PATH.read_text(encoding="utf-8")
    assert current == config_docs.render(), f"docs/config.md is stale: run `{config_docs.COMMAND}`"
    assert config_docs.COMMAND in current.splitlines()[2]  # the generator, at the top
