"""The blob log: payloads and checkpoint states beside the SQLite ledger, not in it."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.blob_log import BlobLog, BlobRef
from aggregator.ledger import Ledger
from fedmq.errors import ConfigError
from tests.aggregator.test_ledger import TOPICS, _agg, _fill, _same, _strategy, _update


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.binary(max_size=300), min_size=1, max_size=8), data=st.data())
def test_every_value_reads_back_and_any_damage_reads_as_none(tmp_path_factory, values, data):
    log = BlobLog(tmp_path_factory.mktemp("blobs"))
    refs = [log.append(v) for v in values]
    assert [log.read(r) for r in refs] == values
    i = data.draw(st.integers(0, len(values) - 1))
    if values[i]:  # flip one byte of one value: its CRC tells
        at = refs[i].offset + data.draw(st.integers(0, len(values[i]) - 1))
        path = log.dir / f"{refs[i].segment:08d}.log"
        raw = bytearray(path.read_bytes())
        raw[at] ^= 0xFF
        path.write_bytes(bytes(raw))
        assert log.read(refs[i]) is None
    log.close()


def test_a_new_process_starts_a_new_segment_and_strays_are_deleted(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, checkpoint_every=100)
    _fill(ledger, _strategy(), 0, 5)
    live = ledger.blobs.segments()
    ledger.close()
    stray = path.with_name("ledger.sqlite-blobs") / "00000000.log"  # a crash's leftover
    stray.write_bytes(b"uncommitted")
    again = Ledger(path)
    assert again.blobs.segments() == live and not stray.exists()
    assert again.blobs.segment == live[-1] + 1
    assert (again.blobs.dir.stat().st_mode & 0o777) == 0o700
    for segment in live:
        assert ((again.blobs.dir / f"{segment:08d}.log").stat().st_mode & 0o777) == 0o600
    _, events = again.restore()
    assert len(events) == 5 and all(e.payload == bytes(2048) for e in events)
    again.close()


def test_a_power_cut_that_lost_payloads_resumes_before_the_first_one_lost(tmp_path):
    live = _agg(tmp_path, "fedasync", checkpoint_every=100)
    for seq in range(6):
        live.handle(TOPICS.update("a"), _update("a", seq, base=seq))
    survivor = _agg(tmp_path / "copy", "fedasync", checkpoint_every=100)
    for seq in range(3):
        survivor.handle(TOPICS.update("a"), _update("a", seq, base=seq))
    # What reached the disk: SQLite's rows, but the segment only up to the 4th payload.
    blobs = tmp_path / "ledger.sqlite-blobs"
    (segment,) = sorted(blobs.iterdir())
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        (cut,) = db.execute("SELECT offset FROM blobs ORDER BY event LIMIT 1 OFFSET 3").fetchone()
    db.close()
    segment.write_bytes(segment.read_bytes()[: cut + 10])
    again = _agg(tmp_path, "fedasync", checkpoint_every=100)
    _same(again, survivor)  # the three before the first lost payload
    assert again.intake.ledger.wal_lost  # so the start check asks before serving this
    assert again.intake.ledger.last_seqs() == {"a": 2}
    assert again.handle(TOPICS.update("a"), _update("a", 3, base=3))
    later = _agg(tmp_path, "fedasync", checkpoint_every=100)  # the loss was written down
    assert later.strategy.version == 4 and later.intake.ledger.wal_lost


def test_a_damaged_checkpoint_state_is_bad_checkpoint(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.checkpoint(_strategy())
    ledger.close()
    shutil.rmtree(path.with_name("ledger.sqlite-blobs"))
    with pytest.raises(ConfigError) as err:
        Ledger(path).restore(_strategy())
    assert err.value.reason == "bad_checkpoint" and "missing or damaged" in err.value.message


def test_a_schema_3_ledger_with_its_blobs_in_sqlite_resumes_exactly(tmp_path):
    live = _agg(tmp_path, "fedasync", checkpoint_every=3)
    for seq in range(5):
        live.handle(TOPICS.update("a"), _update("a", seq, base=seq))
    ledger = Ledger(tmp_path / "ledger.sqlite")
    db, log = ledger.db, ledger.blobs
    # Rewrite it as schema 3 had it: states and payloads as blobs in SQLite.
    (cid, *ref) = db.execute("SELECT id, segment, offset, length, crc FROM checkpoints").fetchone()
    db.execute("UPDATE checkpoints SET state = ? WHERE id = ?", (log.read(BlobRef(*ref)), cid))
    rows = db.execute("SELECT event, segment, offset, length, crc FROM blobs").fetchall()
    for event, *ref in rows:
        db.execute("INSERT INTO payloads VALUES (?, ?)", (event, log.read(BlobRef(*ref))))
    db.execute("DROP TABLE blobs")
    for column in ("segment", "offset", "length", "crc"):
        db.execute(f"ALTER TABLE checkpoints DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 3")
    ledger.close()
    shutil.rmtree(tmp_path / "ledger.sqlite-blobs")
    again = _agg(tmp_path, "fedasync", checkpoint_every=3)
    _same(live, again)
    assert again.intake.ledger.db.execute("PRAGMA user_version").fetchone() == (4,)
    for seq in range(5, 8):  # and it goes on, now through the blob log
        assert live.handle(TOPICS.update("a"), _update("a", seq, base=seq))
        assert again.handle(TOPICS.update("a"), _update("a", seq, base=seq))
    _same(live, _agg(tmp_path, "fedasync", checkpoint_every=3))


def test_a_durable_ledger_syncs_the_blob_log_before_each_commit(tmp_path):
    ledger, strategy = Ledger(tmp_path / "ledger.sqlite", durable=True), _strategy()
    with ledger.transaction():
        _fill(ledger, strategy, 0, 3)
        assert ledger.blobs._unsynced  # appended, not yet durable
    assert not ledger.blobs._unsynced
    plain = Ledger(tmp_path / "plain.sqlite")
    _fill(plain, strategy, 0, 3)
    assert plain.blobs._unsynced  # NORMAL: the OS has it, which a killed process cannot lose
    ledger.close()
    plain.close()
