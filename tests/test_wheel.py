"""The wheel, as a user gets it: built, installed into a fresh venv, run outside the repo.

``broker_config/`` ships inside the wheel as package data (issue 8 §7), so ``fedmq broker``
and ``fedmq broker add-device`` must work from an install with no source checkout near
it. The wheel is installed with ``--no-deps``; its third-party dependencies come from
this interpreter's site-packages through a ``.pth`` file, after the venv's own, so nothing
is downloaded and every ``fedmq`` module is the installed one (checked, not assumed).
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.broker.base import accepting

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedmq", "edge_agent", "aggregator", "tools", "broker_config")
MODULES = ("fedmq", "edge_agent", "aggregator", "tools", "broker_config", "tools.broker")
READY = re.compile(r"fedmq broker: mosquitto \((?P<conf>\S+)\) listening on mqtt://[\d.]+:(\d+)")

pytestmark = pytest.mark.timeout(300)  # building the wheel dominates: ~20 s on an idle box


@dataclass(frozen=True)
class Install:
    python: Path
    fedmq: Path
    site: Path  # the venv's site-packages, where the wheel put fedmq
    cwd: Path  # an empty directory outside the repo
    env: dict[str, str]

    def run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(a) for a in args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert not check or done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
        return done


def _run(*args: str | Path) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"  # a copy: building in the checkout would leave build/ and egg-info
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", src)
    (wheel,) = (work / "dist").glob("fedmq-*.whl")
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    site = Path(str(site).strip())
    ours = sysconfig.get_paths()
    (site / "fedmq_test_deps.pth").write_text(f"{ours['purelib']}\n{ours['platlib']}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONUNBUFFERED"] = "1"
    cwd = work / "elsewhere"
    cwd.mkdir()
    return Install(python, venv / "bin" / "fedmq", site.resolve(), cwd, env)


def _inside(path: str | Path, directory: Path) -> bool:
    return Path(path).resolve().is_relative_to(directory)


def test_fedmq_and_its_configs_come_from_the_installed_wheel(installed: Install) -> None:
    code = (
        "import importlib, json\n"
        "from tools.pki.provision import PRODUCTION_CONF, render_production_config as r\n"
        f"files = {{m: importlib.import_module(m).__file__ for m in {MODULES!r}}}\n"
        "conf = r(PRODUCTION_CONF.read_text(), cafile='ca.crt', certfile='b.crt',\n"
        "         keyfile='b.key', password_file='passwd')\n"
        "print(json.dumps({'files': files, 'conf': conf}))\n"
    )
    out = json.loads(installed.run(installed.python, "-c", code).stdout)
    for module, file in out["files"].items():
        assert _inside(file, installed.site), f"{module} imported from {file}"
        assert not _inside(file, ROOT), f"{module} imported from the repo: {file}"
    (acl,) = re.findall(r"(?m)^acl_file (\S+)$", out["conf"])
    assert Path(acl) == installed.site / "broker_config" / "acl"
    assert Path(acl).read_text() == (ROOT / "broker_config" / "acl").read_text()


def _ready_line(proc: subprocess.Popen[str], timeout: float) -> re.Match[str]:
    """The broker's "listening" line, read without blocking past ``timeout``."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and sel.select(deadline - time.monotonic()):
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
            if match := READY.search(line):
                return match
    proc.kill()
    pytest.fail(f"no ready line from `fedmq broker`; it said:\n{seen}{proc.communicate()}")


def test_fedmq_broker_runs_the_packaged_dev_conf_and_stops_on_sigterm(
    installed: Install, mosquitto_binaries: dict[str, str]
) -> None:
    proc = subprocess.Popen(
        [installed.fedmq, "broker", "--port", "0", "--kind", "mosquitto"],
        cwd=installed.cwd,
        env=installed.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _ready_line(proc, timeout=60)
        assert Path(ready["conf"]) == installed.site / "broker_config" / "dev.conf"
        port = int(ready[2])
        assert accepting(port)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "fedmq broker: stopped" in out
    assert not accepting(port)


def test_fedmq_broker_add_device_writes_a_private_password_file(
    installed: Install, mosquitto_binaries: dict[str, str]
) -> None:
    passwd = installed.cwd / "passwd"
    done = installed.run(
        installed.fedmq, "broker", "add-device", "pi-001", "--password-file", "passwd"
    )
    password = done.stdout.strip()
    assert len(password) >= 32 and password not in passwd.read_text()
    assert [line.split(":")[0] for line in passwd.read_text().splitlines()] == ["pi-001"]
    # Private to its owner, or (run as root) readable by Mosquitto's group too.
    assert stat.S_IMODE(passwd.stat().st_mode) in (0o600, 0o640)
    assert (installed.cwd / "acl").read_text().count("user pi-001") == 1

    again = installed.run(
        installed.fedmq, "broker", "add-device", "pi-001", "--password-file", "passwd", check=False
    )
    assert again.returncode != 0
    assert "already in" in again.stderr and "Traceback" not in again.stderr
