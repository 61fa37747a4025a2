"""Fixtures shared by the whole suite: real brokers, and a fleet name of each test's own.

Broker fixtures come per test (``mosquitto``, ``embedded_broker``: a fresh broker, e.g. for
restart tests) and per session (``mosquitto_session``, ``embedded_broker_session``: one
broker shared by many tests, each isolated by its ``fleet``). ``broker`` runs a test once
against each kind. A missing Mosquitto skips its tests, except under CI or
``FEDMQ_REQUIRE_MOSQUITTO=1``, where it fails them. The embedded broker is fedmq's own
code and always available.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NoReturn

import pytest

from fedmq.errors import BrokerError
from tools.broker import EmbeddedBroker, LocalBroker, MosquittoBroker
from tools.broker.mosquitto import find_binary

FLEET_MAX = 64


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def missing_tool(message: str) -> NoReturn:
    """Skip the test for a missing broker tool, or fail it under CI or
    FEDMQ_REQUIRE_MOSQUITTO=1."""
    for flag in ("CI", "FEDMQ_REQUIRE_MOSQUITTO"):
        if _env_flag(flag):
            pytest.fail(f"{message} (required because {flag} is set)", pytrace=False)
    pytest.skip(message)


def make_broker(kind: str, **options: Any) -> LocalBroker:
    """An unstarted broker of ``kind``; a missing Mosquitto skips the test (see
    :func:`missing_tool`)."""
    if kind == "embedded":
        return EmbeddedBroker(**options)
    if kind != "mosquitto":
        raise ValueError(f"unknown broker kind {kind!r}")
    try:
        return MosquittoBroker(**options)
    except BrokerError as exc:
        if exc.reason != "no_mosquitto":
            raise
        missing_tool(str(exc))


def _running_broker(name: str, kind: str, scope: Literal["function", "session"], doc: str) -> Any:
    """A fixture ``name`` that yields a running broker of ``kind``, one per ``scope``."""

    def running() -> Iterator[LocalBroker]:
        with make_broker(kind) as broker:
            yield broker

    running.__doc__ = doc
    return pytest.fixture(scope=scope, name=name)(running)


mosquitto = _running_broker(
    "mosquitto",
    "mosquitto",
    "function",
    "A Mosquitto of this test's own (the packaged dev.conf, free loopback port).",
)
mosquitto_session = _running_broker(
    "mosquitto_session",
    "mosquitto",
    "session",
    "One Mosquitto for the whole session; isolate tests with ``fleet``.",
)
embedded_broker = _running_broker(
    "embedded_broker",
    "embedded",
    "function",
    "An embedded broker of this test's own, on a free loopback port.",
)
embedded_broker_session = _running_broker(
    "embedded_broker_session",
    "embedded",
    "session",
    "One embedded broker for the whole session; isolate tests with ``fleet``.",
)


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request: pytest.FixtureRequest) -> LocalBroker:
    """Each kind of broker in turn, shared across the session."""
    shared = {"mosquitto": "mosquitto_session", "embedded": "embedded_broker_session"}
    return request.getfixturevalue(shared[request.param])


# AWS IoT Core's cap. Mosquitto 2.0 calls message_size_limit deprecated in favour of
# max_packet_size, but only message_size_limit caps the payload itself (max_packet_size
# counts the topic and headers too, and disconnects the sender); test_chunked.py checks
# that a 200 KB publish through this broker is really dropped.
PAYLOAD_CAP = 131072


# Below the 64 chunks the aggregator's inbox holds unacknowledged: Mosquitto's default
# is 20, and managed brokers have windows of their own.
SMALL_WINDOW = 4


def _dev_conf_with(
    factory: pytest.TempPathFactory, name: str, values: dict[str, str]
) -> Iterator[LocalBroker]:
    """A Mosquitto from dev.conf with the lines of ``values`` replaced."""
    from tools.broker.mosquitto import DEV_CONF, substitute_lines

    conf = factory.mktemp(f"mosquitto-{name}") / f"{name}.conf"
    conf.write_text(substitute_lines(DEV_CONF.read_text(encoding="utf-8"), values))
    with make_broker("mosquitto", config=conf) as broker:
        yield broker


@pytest.fixture
def mosquitto_128k(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A Mosquitto of this test's own that drops any payload over 128 KiB (dev.conf with
    ``message_size_limit 131072``), like a managed broker."""
    yield from _dev_conf_with(tmp_path_factory, "128k", {"message_size_limit": str(PAYLOAD_CAP)})


@pytest.fixture
def mosquitto_small_window(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A Mosquitto of this test's own that sends a client at most ``SMALL_WINDOW``
    unacknowledged QoS 1 messages (dev.conf with ``max_inflight_messages 4``)."""
    yield from _dev_conf_with(
        tmp_path_factory, "window", {"max_inflight_messages": str(SMALL_WINDOW)}
    )


@pytest.fixture
def mosquitto_binaries() -> dict[str, str]:
    """The paths of ``mosquitto`` and ``mosquitto_passwd``; missing ones skip the test (see
    :func:`missing_tool`)."""
    found = {name: find_binary(name) for name in ("mosquitto", "mosquitto_passwd")}
    absent = [name for name, path in found.items() if path is None]
    if absent:
        missing_tool(f"no {' or '.join(absent)} on PATH or in the usual sbin directories")
    return {name: str(path) for name, path in found.items()}


@pytest.fixture
def new_broker() -> Iterator[Callable[..., LocalBroker]]:
    """``new_broker(kind, **options)``: unstarted brokers, all closed when the test ends."""
    made: list[LocalBroker] = []

    def make(kind: str, **options: Any) -> LocalBroker:
        made.append(make_broker(kind, **options))
        return made[-1]

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def fleet(request: pytest.FixtureRequest) -> str:
    """A fleet name of this test's own: its node name in [a-z0-9_-], unique, ≤ 64 chars.

    Topics live under ``fl/{fleet}/``, so tests sharing a broker never see each other's
    messages, retained ones included; the random suffix keeps reruns apart too.
    """
    suffix = uuid.uuid4().hex[:8]
    name = re.sub(r"[^a-z0-9_-]+", "-", request.node.name.lower())
    name = name[: FLEET_MAX - len(suffix) - 1].strip("-_") or "test"
    return f"{name}-{suffix}"


# Valid values of settings whose ``check`` (not a list of choices) says what they may be.
CHECKED_SAMPLES = {"encoding": "topk:0.25"}


@pytest.fixture
def sample_value() -> Callable[[Any], Any]:
    """``sample_value(setting)``: a valid value of a declared setting, not its default."""

    def sample(s: Any) -> Any:
        if s.choices:
            return next(c for c in s.choices if c != s.default)
        if s.name in CHECKED_SAMPLES:
            return CHECKED_SAMPLES[s.name]
        if s.type is bool:
            return not s.default
        if s.type in (int, float):
            return s.type((s.default or 1) * 2 + 1)
        return s.type(f"sample-{s.name}")

    return sample


# How a user runs fedmq: the console script's entry point, in a process of its own.
FEDMQ = [sys.executable, "-c", "from tools.entry import main; main()"]


class Daemons:
    """``fedmq aggregator`` / ``fedmq agent`` processes, logging to files; all reaped."""

    argv = FEDMQ

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        with (self.workdir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen([*FEDMQ, *args], stdout=subprocess.DEVNULL, stderr=log)
        self.procs[name] = proc
        return proc

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A one-shot ``fedmq`` command, its output captured as text."""
        return subprocess.run([*FEDMQ, *args], capture_output=True, text=True, timeout=timeout)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.procs)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()  # works on a SIGSTOPped process too
            proc.wait()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(tmp_path)
    yield d
    d.close()


@pytest.fixture
def digits_files(tmp_path: Path) -> Callable[[int], tuple[list[Path], Path]]:
    """``digits_files(n)``: n IID shards of the digits task (.npz) and its test set."""

    def make(n: int) -> tuple[list[Path], Path]:
        import numpy as np

        from fedmq.data import Dataset, save_npz
        from tools.sim.partition import partition
        from tools.sim.tasks import load_task

        task = load_task("digits")
        paths = []
        for i, idx in enumerate(partition("iid", task.train.y, n, np.random.default_rng(0))):
            paths.append(tmp_path / f"dev{i}.npz")
            save_npz(paths[-1], Dataset(task.train.x[idx], task.train.y[idx]))
        save_npz(tmp_path / "eval.npz", task.test)
        return paths, tmp_path / "eval.npz"

    return make
