"""The ledger file's layout: its tables, schema versions and the run it belongs to.

``PRAGMA user_version`` is the schema version. A file without tables (new, or 0 bytes)
gets the current schema and an *origin* (``new``, or ``empty`` for 0 bytes) that lasts
until a start check accepts it: the start check (``aggregator.startup``) must not
mistake it for a federation that is just beginning while the broker still retains a
model, not even after a refused start already wrote its first checkpoint. Schema 2
ledgers gain the ``meta`` table in place; their run is unknown until the start check
adopts the run of the retained model. Schema 3 ledgers gain ``blobs`` and the
checkpoints' reference columns in place: the payloads and states they already hold
in SQLite are still read, and new ones go to the blob log (``aggregator.blob_log``).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fedmq.errors import ConfigError

SCHEMA_VERSION = 4  # 0 with tables: an earlier fedmq, which pickled; 2: no meta; 3: no blobs
META = """
CREATE TABLE meta (                -- the federation this ledger belongs to
    key TEXT PRIMARY KEY,          -- run | rollbacks | replaces | origin | open | wal_lost
    value TEXT NOT NULL
) WITHOUT ROWID;
"""
# Where a value in the blob log is (``aggregator.blob_log.BlobRef``).
BLOBS = """
CREATE TABLE blobs (               -- payloads of applied updates no checkpoint covers yet
    event INTEGER PRIMARY KEY,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    crc INTEGER NOT NULL
);
"""
# DP spend: each device's Gaussian mechanisms by noise multiplier z, never folded away.
# Added within schema 3, so a schema 3 ledger may or may not have it.
PRIVACY = """
CREATE TABLE IF NOT EXISTS privacy (
    device TEXT NOT NULL,
    z REAL NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (device, z)
) WITHOUT ROWID;
"""
CHECKPOINT_REF = ("segment", "offset", "length", "crc")  # NULL: the state is in ``state``
TO_4 = (
    PRIVACY
    + BLOBS
    + "".join(f"ALTER TABLE checkpoints ADD COLUMN {c} INTEGER;" for c in CHECKPOINT_REF)
)
SCHEMA = (
    """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after folding
    kind TEXT NOT NULL,            -- applied | rejected | flush | discard
    device TEXT,
    seq INTEGER,
    reason TEXT,
    version INTEGER NOT NULL,      -- the global version after this event
    staleness INTEGER,
    samples INTEGER,
    at REAL NOT NULL
);
CREATE UNIQUE INDEX events_device_seq ON events (device, seq) WHERE seq IS NOT NULL;
CREATE TABLE payloads (            -- schema 3 kept payloads here, now in ``blobs``
    event INTEGER PRIMARY KEY,
    payload BLOB NOT NULL
);
CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    last_event INTEGER NOT NULL,
    strategy TEXT NOT NULL,
    version INTEGER NOT NULL,
    state BLOB NOT NULL,           -- empty when the state is in the blob log
    at REAL NOT NULL,
    segment INTEGER,
    offset INTEGER,
    length INTEGER,
    crc INTEGER
);
CREATE TABLE devices (             -- folded events: each device's last seq
    device TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE tallies (             -- folded events: how many of each kind and reason
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,          -- '' for applied and flush
    n INTEGER NOT NULL,
    PRIMARY KEY (kind, reason)
) WITHOUT ROWID;
"""
    + META
    + BLOBS
    + PRIVACY
)


@dataclass(frozen=True)
class RunRecord:
    """The run a ledger belongs to (``run`` None: not known yet) and its rollbacks.

    ``replaces`` is the run a ``--new-run`` start replaced: until the new run's first
    model is out, the broker still retains that one, and that is no conflict.
    """

    run: str | None = None
    rollbacks: int = 0
    replaces: str | None = None


def open_schema(db: sqlite3.Connection, path: Path, origin: str) -> None:
    """Create or upgrade the schema in ``db``.

    A file without tables gets the current schema and ``origin`` (``new`` or ``empty``:
    it existed with 0 bytes) in ``meta``, kept until the start check writes a run.
    """
    (version,) = db.execute("PRAGMA user_version").fetchone()
    (tables,) = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    if version == SCHEMA_VERSION:
        return
    if version == 0 and tables == 0:
        # Only before the first table exists can auto_vacuum still be switched on.
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        origin_row = f"INSERT INTO meta (key, value) VALUES ('origin', '{origin}');"
        db.executescript(
            f"BEGIN; {SCHEMA} {origin_row} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
        )
        return
    if version in (2, 3):
        meta = META if version == 2 else ""
        db.executescript(f"BEGIN; {meta} {TO_4} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        return
    db.close()
    if version == 0:
        raise ConfigError(
            "old_ledger",
            f"{path} is a ledger of an older fedmq (pickled checkpoints, which this"
            " version will not load): finish that federation with the older fedmq, or"
            " move the file away to start a new one from the configured model",
        )
    raise ConfigError(
        "ledger_version",
        f"{path} has ledger schema {version}; this fedmq reads {SCHEMA_VERSION}"
        " (was it written by a newer fedmq?)",
    )


def read_run(db: sqlite3.Connection) -> tuple[RunRecord, str | None]:
    """The run record and the origin (None once a start check has written a run)."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    record = RunRecord(meta.get("run"), int(meta.get("rollbacks", 0)), meta.get("replaces"))
    return record, meta.get("origin")


def mark_open(db: sqlite3.Connection, is_open: bool) -> bool:
    """Set the ``open`` marker (an aggregator holds this ledger); True if it was set.

    The marker goes into the main file at once (a checkpoint), so a ledger whose writer
    died keeps it there even when its ``-wal`` file is lost with what it held.
    """
    (was,) = db.execute("SELECT COUNT(*) FROM meta WHERE key = 'open'").fetchone()
    if is_open:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('open', '1')")
        db.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
    else:
        db.execute("DELETE FROM meta WHERE key = 'open'")
    return bool(was)


def note_wal_lost(db: sqlite3.Connection, lost: bool) -> bool:
    """A lost WAL stays on record (``wal_lost`` in ``meta``) until a start check accepts
    the ledger (``write_run``): a refused start must refuse again, not forget."""
    if lost:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('wal_lost', '1')")
    return lost or db.execute("SELECT 1 FROM meta WHERE key = 'wal_lost'").fetchone() is not None


def write_run(db: sqlite3.Connection, record: RunRecord) -> None:
    """Replace the run record and forget the origin (in the caller's transaction)."""
    db.execute(
        "DELETE FROM meta WHERE key IN ('run', 'rollbacks', 'replaces', 'origin', 'wal_lost')"
    )
    rows = [("rollbacks", str(record.rollbacks))]
    rows += [(k, v) for k, v in (("run", record.run), ("replaces", record.replaces)) if v]
    db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows)


def read_last_seqs(db: sqlite3.Connection) -> dict[str, int]:
    """Each device's last seq, over its events and its folded ones."""
    return dict(
        db.execute(
            "SELECT device, MAX(seq) FROM ("
            " SELECT device, seq FROM events WHERE seq IS NOT NULL"
            " UNION ALL SELECT device, last_seq FROM devices"
            ") GROUP BY device"
        ).fetchall()
    )


def read_privacy(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """The DP spend: device -> {z as text: mechanisms}."""
    out: dict[str, dict[str, int]] = {}
    for device, z, n in db.execute("SELECT device, z, n FROM privacy"):
        out.setdefault(device, {})[repr(float(z))] = n
    return out


def read_counts(db: sqlite3.Connection) -> tuple[int, Counter]:
    """Updates applied, and refusals by reason, over the events and the tallies."""
    rows = db.execute(
        "SELECT kind, reason, SUM(n) FROM ("
        " SELECT kind, COALESCE(reason, '') AS reason, COUNT(*) AS n FROM events"
        " GROUP BY 1, 2 UNION ALL SELECT kind, reason, n FROM tallies"
        ") GROUP BY 1, 2"
    ).fetchall()
    applied = sum(n for kind, _, n in rows if kind == "applied")
    refused: Counter = Counter()
    for kind, reason, n in rows:
        if kind in ("rejected", "discard"):
            refused[reason] += n
    return applied, refused
