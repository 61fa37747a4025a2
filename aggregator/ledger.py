"""The aggregator's memory across crashes: an event log and strategy checkpoints in SQLite.

Every update the aggregator decides on is one row of ``events`` (applied with its
payload, or rejected with its reason), committed before the broker gets its PUBACK,
and every deadline flush is a row too. Every ``checkpoint_every`` applied events the
whole strategy (weights, version, buffers, history) is pickled into ``checkpoints`` in
the same transaction. A restart loads the last checkpoint and replays the events after
it; strategies are deterministic, so the result is the state at the last commit.

WAL with ``synchronous=NORMAL`` survives a killed process (the OS still holds what was
written); ``durable=True`` (``synchronous=FULL``) also survives a power cut, at the
cost of an fsync per update. The database is the aggregator's own file: the pickles
in it are trusted like its code.
"""

from __future__ import annotations

import pickle
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aggregator.strategies import Strategy
from fedmq.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,            -- applied | rejected | flush
    device TEXT,
    seq INTEGER,
    reason TEXT,
    version INTEGER NOT NULL,      -- the global version after this event
    staleness INTEGER,
    samples INTEGER,
    at REAL NOT NULL,
    payload BLOB                   -- applied updates until a checkpoint covers them
);
CREATE UNIQUE INDEX IF NOT EXISTS events_device_seq ON events (device, seq)
    WHERE seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    last_event INTEGER NOT NULL,
    strategy TEXT NOT NULL,
    version INTEGER NOT NULL,
    state BLOB NOT NULL,
    at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    device: str | None
    seq: int | None
    payload: bytes | None


class Ledger:
    def __init__(self, path: str | Path, *, checkpoint_every: int = 100, durable: bool = False):
        self.path = Path(path)
        self.checkpoint_every = checkpoint_every
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError("bad_ledger", f"cannot open ledger {self.path}: {exc}") from exc
        self._since_checkpoint = self._count_since_checkpoint()

    def close(self) -> None:
        self.db.close()

    # -- writing -----------------------------------------------------------------------

    def record(
        self,
        strategy: Strategy,
        kind: str,
        *,
        device: str | None = None,
        seq: int | None = None,
        reason: str | None = None,
        staleness: int | None = None,
        samples: int | None = None,
        payload: bytes | None = None,
    ) -> bool:
        """Commit one event (and a checkpoint when one is due); False for a known (device, seq)."""
        changes = kind != "rejected"
        with self._transaction():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO events"
                " (kind, device, seq, reason, version, staleness, samples, at, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    device,
                    seq,
                    reason,
                    strategy.version,
                    staleness,
                    samples,
                    time.time(),
                    payload if changes else None,
                ),
            )
            if cur.rowcount == 0:
                return False
            if changes:
                self._since_checkpoint += 1
                if self._since_checkpoint >= self.checkpoint_every:
                    self._checkpoint(strategy, cur.lastrowid)
        return True

    def checkpoint(self, strategy: Strategy) -> None:
        with self._transaction():
            last = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            self._checkpoint(strategy, last)

    def _checkpoint(self, strategy: Strategy, last_event: int) -> None:
        self.db.execute(
            "INSERT INTO checkpoints (last_event, strategy, version, state, at)"
            " VALUES (?, ?, ?, ?, ?)",
            (last_event, strategy.name, strategy.version, pickle.dumps(strategy), time.time()),
        )
        # The checkpoint covers these: keep the record, drop the bytes.
        self.db.execute("UPDATE events SET payload = NULL WHERE id <= ?", (last_event,))
        self.db.execute("DELETE FROM checkpoints WHERE id < (SELECT MAX(id) FROM checkpoints)")
        self._since_checkpoint = 0

    def _transaction(self) -> _Tx:
        return _Tx(self.db)

    def _count_since_checkpoint(self) -> int:
        last = self.db.execute("SELECT COALESCE(MAX(last_event), 0) FROM checkpoints").fetchone()
        return self.db.execute(
            "SELECT COUNT(*) FROM events WHERE id > ? AND kind != 'rejected'", (last[0],)
        ).fetchone()[0]

    # -- reading -----------------------------------------------------------------------

    def restore(self) -> tuple[Strategy | None, list[Event]]:
        """The last checkpointed strategy (None if none) and the events to replay on it."""
        row = self.db.execute(
            "SELECT last_event, state FROM checkpoints ORDER BY id DESC LIMIT 1"
        ).fetchone()
        last, strategy = (0, None) if row is None else (row[0], pickle.loads(row[1]))
        events = [
            Event(*r)
            for r in self.db.execute(
                "SELECT id, kind, device, seq, payload FROM events"
                " WHERE id > ? AND kind != 'rejected' ORDER BY id",
                (last,),
            )
        ]
        return strategy, events

    def last_seqs(self) -> dict[str, int]:
        return dict(
            self.db.execute(
                "SELECT device, MAX(seq) FROM events WHERE seq IS NOT NULL GROUP BY device"
            ).fetchall()
        )

    def counts(self) -> tuple[int, Counter]:
        """Updates applied, and rejections by reason, over the ledger's whole life."""
        applied = self.db.execute("SELECT COUNT(*) FROM events WHERE kind = 'applied'")
        rejected = self.db.execute(
            "SELECT reason, COUNT(*) FROM events WHERE kind = 'rejected' GROUP BY reason"
        )
        return applied.fetchone()[0], Counter(dict(rejected.fetchall()))


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
