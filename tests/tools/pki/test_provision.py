"""``fedmq broker add-device``: a password per user, only its hash stored, its fleet's rights."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from provisioned import FEDMQ, assert_one_line_error, fedmq

from tools.pki import acl, provision
from tools.pki.provision import ACL_FILE


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
