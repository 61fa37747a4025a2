"""deploy/: the systemd units pass ``systemd-analyze verify`` and keep their promises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
INSTALLED = "/opt/fedmq/venv/bin/fedmq"  # where docs/deploy.md installs fedmq


def settings(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_there_is_a_unit_for_each_daemon() -> None:
    assert [u.name for u in UNITS] == ["fedmq-agent.service", "fedmq-aggregator.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_keeps_its_promises(unit: Path) -> None:
    s = settings(unit)
    assert s["Restart"] == ["on-failure"]
    assert s["DynamicUser"] == ["yes"] or "User" in s
    assert s["ProtectSystem"] == ["strict"]
    assert s["StateDirectory"] and s["NoNewPrivileges"] == ["yes"]
    # Credentials come through LoadCredential, never in the unit or on the command line.
    assert any(c.startswith("mqtt-password:/etc/fedmq/") for c in s["LoadCredential"])
    assert "--password-file ${CREDENTIALS_DIRECTORY}/mqtt-password" in s["ExecStart"][0]
    assert not any(k.startswith("Environment") and "PASSWORD" in "".join(v) for k, v in s.items())
    assert s["ExecStart"][0].startswith(INSTALLED)


def test_a_start_that_needs_an_operator_is_not_restarted_in_a_loop() -> None:
    from fedmq.errors import ConfigError, StorageError

    by_name = {u.name: settings(u) for u in UNITS}
    agg = by_name["fedmq-aggregator.service"]["RestartPreventExitStatus"][0].split()
    assert agg == [str(ConfigError.exit_code), str(StorageError.exit_code)]
    agent = by_name["fedmq-agent.service"]["RestartPreventExitStatus"][0].split()
    assert agent == [str(ConfigError.exit_code)]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd is absent: systemd-analyze not found"
)
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verify_accepts_unit(unit: Path, tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point it at this environment's fedmq.
    fedmq = Path(sys.executable).parent / "fedmq"
    if not fedmq.exists():
        pytest.fail(f"{fedmq} is missing: install fedmq in this environment (make install)")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED, str(fedmq)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    about_ours = [line for line in proc.stderr.splitlines() if unit.name in line]
    assert proc.returncode == 0 and not about_ours, proc.stderr
