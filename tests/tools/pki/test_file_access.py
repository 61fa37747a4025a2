"""Who can read the password file and ACL, and Mosquitto started as root reading them.

Mosquitto started as root switches to its ``user`` (``mosquitto``) before it opens the
server key, the password file and the ACL, so root-owned 0600 files stop it. Run as
root, ``fedmq broker add-device`` leaves both files group ``mosquitto``, mode 0640; the
README ("A real fleet") says to do the same to the key. The broker tests elsewhere run
Mosquitto with ``user root`` (tools.broker.mosquitto); here it drops privileges as in
production, so the files live in a directory the ``mosquitto`` user can enter.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from provisioned import (
    MARKER,
    add_device,
    bounded,
    fedmq,
    make_certs,
    production_conf,
    seen,
    until_marker,
)

from fedmq.config import BrokerConfig
from tools.broker import LOOPBACK
from tools.broker.base import accepting, free_port
from tools.broker.mosquitto import find_mosquitto
from tools.pki import provision

AS_ROOT = os.geteuid() == 0
try:
    MOSQUITTO_GID: int | None = grp.getgrnam("mosquitto").gr_gid
except KeyError:
    MOSQUITTO_GID = None
needs_root = pytest.mark.skipif(
    not AS_ROOT or MOSQUITTO_GID is None, reason="needs root and a mosquitto group"
)


def access(path: Path) -> tuple[int, str, str]:
    st = path.stat()
    return (
        stat.S_IMODE(st.st_mode),
        pwd.getpwuid(st.st_uid).pw_name,
        grp.getgrgid(st.st_gid).gr_name,
    )


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the ``mosquitto`` user can enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="fedmq-root-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_root
def test_as_root_the_files_are_for_the_mosquitto_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "passwd"
    ran = fedmq(capsys, "broker", "add-device", "pi-1", "--password-file", passwd)
    assert ran.code == 0, ran
    assert "mode 0640, group mosquitto" in ran.err  # what it did, said where it is read
    assert access(passwd) == access(tmp_path / "acl") == (0o640, "root", "mosquitto")
    # Another device, and a rotated password, keep it so.
    assert fedmq(capsys, "broker", "add-device", "pi-2", "--password-file", passwd).code == 0
    forced = fedmq(capsys, "broker", "add-device", "pi-1", "--password-file", passwd, "--force")
    assert forced.code == 0
    assert access(passwd) == access(tmp_path / "acl") == (0o640, "root", "mosquitto")


@needs_root
def test_an_explicit_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    passwd = tmp_path / "passwd"
    ran = fedmq(
        capsys, "broker", "add-device", "pi-1", "--password-file", passwd, "--group", "root"
    )
    assert ran.code == 0, ran
    assert access(passwd) == access(tmp_path / "acl") == (0o640, "root", "root")


def test_not_root_means_owner_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert provision.reader_group(None) is None  # mode 0600: no group to guess
    assert provision.reader_group("root") == 0  # unless asked for one


@contextlib.contextmanager
def mosquitto_as_root(conf: Path, port: int) -> Iterator[subprocess.Popen[bytes] | str]:
    """Mosquitto on ``conf`` without ``user root``; the process, or its log if it exited."""
    binary = find_mosquitto()
    if binary is None:
        pytest.fail("no mosquitto binary")
    log = conf.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not accepting(port) and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.05)  # the pause between probes
        yield proc if proc.poll() is None else log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)


def provision_root_broker(
    top: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[Path, int, dict[str, str]]:
    """Certs, passwd and acl in ``top`` as the README says; the config, port and passwords."""
    make_certs(capsys, top / "certs")
    key = top / "certs" / "broker.key"
    assert MOSQUITTO_GID is not None
    os.chown(key, -1, MOSQUITTO_GID)  # README: chgrp mosquitto broker.key; chmod 0640
    key.chmod(0o640)
    passwd, data = top / "passwd", top / "data"
    data.mkdir()
    mosquitto_user = pwd.getpwnam("mosquitto")
    os.chown(data, mosquitto_user.pw_uid, mosquitto_user.pw_gid)
    passwords = {
        user: add_device(capsys, passwd, user, role, "farm", *extra)
        for user, role in (("dev-a", "device"), ("agg", "aggregator"))
    }
    port = free_port()
    conf = top / "mosquitto.conf"
    rendered = production_conf(
        top, passwd, top / "acl", port=port, bind=LOOPBACK, persistence_dir=data
    )
    conf.write_text(rendered)
    return conf, port, passwords


@needs_root
async def test_mosquitto_started_as_root_reads_what_add_device_wrote(
    open_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf, port, passwords = provision_root_broker(open_dir, capsys)
    assert "\nuser " not in conf.read_text()  # Mosquitto's default: drop to `mosquitto`

    def client(user: str) -> aiomqtt.Client:
        cfg = BrokerConfig.from_url(
            f"mqtts://{LOOPBACK}:{port}",
            username=user,
            password=passwords[user],
            ca=open_dir / "certs" / "ca.crt",
        )
        return aiomqtt.Client(**cfg.client_kwargs(), timeout=10)

    with mosquitto_as_root(conf, port) as proc:
        assert not isinstance(proc, str), proc
        uid = Path(f"/proc/{proc.pid}/status").read_text().split("\nUid:")[1].split()[0]
        assert int(uid) == pwd.getpwnam("mosquitto").pw_uid  # it did switch user

        async def scenario() -> None:
            update = "fl/farm/updates/dev-a"
            async with client("agg") as agg, client("dev-a") as dev:
                await agg.subscribe("fl/farm/updates/+", qos=1)
                await dev.publish(update, MARKER, qos=1)
                assert seen(await until_marker(agg, update)) == [(update, MARKER)]

        await bounded(scenario())


@needs_root
def test_mosquitto_started_as_root_cannot_read_root_only_files(
    open_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The finding: files only root can read stop the broker (group root is the same).
    conf, port, _ = provision_root_broker(open_dir, capsys, "--group", "root")
    with mosquitto_as_root(conf, port) as outcome:
        assert isinstance(outcome, str), "mosquitto started"
        assert "Unable to open pwfile" in outcome
