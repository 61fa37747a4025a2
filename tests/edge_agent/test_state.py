"""edge_agent.state: the seq on disk survives crashes, and damage to it is not fatal."""

from __future__ import annotations

import json
import logging
import os

import pytest

from edge_agent.state import STATE_FILE, SeqStore


def test_seqs_continue_across_instances(tmp_path):
    assert [SeqStore(tmp_path).reserve() for _ in range(3)] == [0, 1, 2]
    assert SeqStore(tmp_path).last == 2


@pytest.mark.parametrize(
    "content",
    [
        b"",  # power lost before anything was written (no atomic rename)
        b'{"next_se',  # truncated
        b"\xff\xfe\x00garbage",  # not text
        b"[1, 2]",
        b'{"next_seq": -3}',
        b'{"next_seq": true}',
        b'{"seq": 4}',
    ],
)
def test_a_damaged_state_file_is_one_warning_and_a_fresh_start(tmp_path, caplog, content):
    (tmp_path / STATE_FILE).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="fedmq.agent"):
        store = SeqStore(tmp_path)
    assert store.last == -1
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "damaged" in record.getMessage() and "resync" in record.getMessage()
    # The damaged file is kept aside for a person to look at; the next write is clean.
    assert (tmp_path / (STATE_FILE + ".damaged")).read_bytes() == content
    assert store.reserve() == 0
    assert SeqStore(tmp_path).last == 0


def test_resync_moves_past_the_aggregators_seq_and_never_back(tmp_path):
    store = SeqStore(tmp_path)  # a lost state file: starts at 0
    assert store.resync(113) == 0
    assert store.reserve() == 114
    assert store.resync(50) is None  # the ledger lags behind: keep the local seq
    assert store.resync(114) is None  # it caught up with what was sent
    assert store.resync(200) == 115
    assert store.reserve() == 201
    assert SeqStore(tmp_path).last == 201


def test_a_crash_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    store = SeqStore(tmp_path)
    store.reserve()
    before = (tmp_path / STATE_FILE).read_text()

    def power_cut(_fd):  # the new bytes are written but never reach the disk
        raise OSError("power cut")

    monkeypatch.setattr(os, "fsync", power_cut)
    with pytest.raises(OSError):
        store.reserve()
    monkeypatch.undo()
    assert (tmp_path / STATE_FILE).read_text() == before
    # A temporary file left behind does not confuse the next start.
    again = SeqStore(tmp_path)
    assert again.last == 0 and again.reserve() == 1
    assert json.loads((tmp_path / STATE_FILE).read_text()) == {"next_seq": 2}
