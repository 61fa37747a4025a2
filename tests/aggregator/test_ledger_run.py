"""aggregator.ledger_schema: the run a ledger belongs to survives restarts; schema 3."""

from __future__ import annotations

import sqlite3

from aggregator.ledger import Ledger
from aggregator.ledger_schema import CHECKPOINT_REF, SCHEMA_VERSION, RunRecord

RUN = "0123456789abcdef"


def test_a_new_ledger_has_schema_4_a_meta_table_and_origin_new(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.run() == (RunRecord(None, 0, None), "new")
    ledger.close()
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (4,)
    assert db.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone() == ("new",)


def test_a_zero_byte_file_is_recorded_as_empty(tmp_path):
    (tmp_path / "ledger.sqlite").write_bytes(b"")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.run()[1] == "empty"


def test_the_run_is_persisted_and_the_origin_forgotten(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.set_run(RunRecord(RUN, 2, "fedcba9876543210"))
    ledger.close()
    again = Ledger(tmp_path / "ledger.sqlite")
    assert again.run() == (RunRecord(RUN, 2, "fedcba9876543210"), None)
    again.set_run(RunRecord(RUN, 3))
    assert again.run() == (RunRecord(RUN, 3, None), None)


def test_the_origin_outlasts_a_reopen_until_a_run_is_written(tmp_path):
    # A refused start already checkpointed; the next start must still see "empty".
    (tmp_path / "ledger.sqlite").write_bytes(b"")
    Ledger(tmp_path / "ledger.sqlite").close()
    assert Ledger(tmp_path / "ledger.sqlite").run()[1] == "empty"


def test_a_schema_2_ledger_gains_meta_and_has_no_run_yet(tmp_path):
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    db = sqlite3.connect(path)
    columns = "".join(f"ALTER TABLE checkpoints DROP COLUMN {c};" for c in CHECKPOINT_REF)
    db.executescript(f"DROP TABLE meta; DROP TABLE blobs; {columns} PRAGMA user_version = 2;")
    db.close()
    ledger = Ledger(path)
    assert ledger.run() == (RunRecord(None, 0, None), None)
    ledger.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (4,)
