"""fedmq.files: the one atomic write behind data sets, ONNX exports, agent state and keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedmq.files import atomic_open, atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_replaces_with_the_exact_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "ca.key"
    old_umask = os.umask(0o077)  # a umask that would clear a 0644 file's read bits
    try:
        assert atomic_write(target, b"secret", mode=0o600) == target
        assert _mode(target) == 0o600
        atomic_write(target, "cert ✓", mode=0o644)  # str is written as UTF-8
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == "cert ✓".encode()
    assert _mode(target) == 0o644
    assert os.listdir(tmp_path) == ["ca.key"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "agent-state.json"
    atomic_write(target, '{"next_seq": 3}')
    with pytest.raises(RuntimeError, match="disk full"), atomic_open(target, text=True) as fh:
        fh.write('{"next_seq": ')
        raise RuntimeError("disk full")
    assert target.read_text() == '{"next_seq": 3}'
    assert os.listdir(tmp_path) == ["agent-state.json"]


def test_a_missing_directory_is_an_os_error_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no" / "such" / "dir" / "model.onnx", b"x")
    assert os.listdir(tmp_path) == []
