"""Feature statistics and the standardizations published, in the ledger's SQLite file.

Two tables beside the ledger's own (``aggregator.ledger``), created if absent, so a
ledger of an earlier fedmq gains them without a schema change: each device's latest
``feature_stats`` payload as received, and every standardization the fleet has held,
keyed by the version it took effect at. A restart rebuilds the merged statistics from
the first and maps late updates through the second.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from fedmq.preprocess import Standardizer

TABLES = """
CREATE TABLE IF NOT EXISTS feature_stats (  -- each device's latest FeatureStats payload
    device TEXT PRIMARY KEY,
    payload BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS preps (          -- the standardization from a version on
    since_version INTEGER PRIMARY KEY,
    mean BLOB NOT NULL,                     -- float32 little-endian
    scale BLOB NOT NULL
);
"""
F32 = np.dtype("<f4")


class StatsStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(TABLES)

    def stats(self) -> dict[str, bytes]:
        return dict(self.db.execute("SELECT device, payload FROM feature_stats").fetchall())

    def put_stats(self, device: str, payload: bytes) -> None:
        self.db.execute(
            "INSERT INTO feature_stats (device, payload) VALUES (?, ?)"
            " ON CONFLICT (device) DO UPDATE SET payload = excluded.payload",
            (device, payload),
        )

    def preps(self) -> list[tuple[int, Standardizer]]:
        rows = self.db.execute(
            "SELECT since_version, mean, scale FROM preps ORDER BY since_version"
        ).fetchall()
        return [(v, Standardizer(np.frombuffer(m, F32), np.frombuffer(s, F32))) for v, m, s in rows]

    def put_prep(self, version: int, prep: Standardizer, *, only: bool = False) -> None:
        """The standardization from ``version`` on; ``only``: it replaces every earlier one."""
        if only:
            self.db.execute("DELETE FROM preps")
        self.db.execute(
            "INSERT OR REPLACE INTO preps (since_version, mean, scale) VALUES (?, ?, ?)",
            (version, prep.mean.astype(F32).tobytes(), prep.scale.astype(F32).tobytes()),
        )
