"""The aggregator's memory across crashes: an event log and strategy checkpoints in SQLite.

Every update the aggregator decides on is one row of ``events`` (applied, with its
payload, or rejected with its reason), committed before the broker gets
its PUBACK, and every deadline flush is a row too. A candidate model the gate refused
is a ``discard`` row (reason ``model_rejected``, with the update that completed it, if
any): it changed the state, dropping what was pending, so it is replayed like a flush
and counted like a rejection. Every ``checkpoint_every`` applied
events the strategy's state (``aggregator.strategies.state``: msgpack fields and
wire-format tensors, no pickle) goes into ``checkpoints`` in the same transaction. A
restart loads the last checkpoint and replays the events after it; strategies are
deterministic, so the result is the state at the last commit.

Payloads and checkpoint states are appended to the blob log (``aggregator.blob_log``,
the directory ``<ledger>-blobs``); SQLite holds their references (``blobs``). A
checkpoint starts a new segment; once it commits, the segments before it are deleted.

The ledger stays small: a checkpoint deletes the payloads it covers, folds event rows
older than the newest ``keep_events`` into per-device last seqs (``devices``) and counts
(``tallies``), and gives the freed pages back to the file system (``auto_vacuum =
INCREMENTAL``, then ``incremental_vacuum`` and a truncating WAL checkpoint). Folding
keeps the dedupe exact: a device's seqs only increase (the validator refuses the rest),
so its last seq is all the dedupe needs.

WAL with ``synchronous=NORMAL`` survives a killed process (the OS still holds what was
written); ``durable=True`` (``synchronous=FULL``, and the blob log fsynced before each
commit) also survives a power cut, at the cost of an fsync per commit. Without it, a
power cut may lose the newest payloads: the replay stops before the first one lost,
drops what came after it, and the ledger reports that as a lost WAL (``wal_lost``).
The files are created 0600, their directories (if the ledger creates them) 0700.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path

from aggregator.blob_log import BlobLog, BlobRef
from aggregator.ledger_schema import (
    CHECKPOINT_REF,
    RunRecord,
    mark_open,
    note_wal_lost,
    open_schema,
    read_counts,
    read_last_seqs,
    read_privacy,
    read_run,
    write_run,
)
from aggregator.storage import storage_failure
from aggregator.strategies import Strategy
from aggregator.strategies.state import decode_checkpoint, encode_checkpoint
from fedmq.errors import ConfigError

log = logging.getLogger("fedmq.aggregator")
# Events that may be folded: older than the newest ``keep_events``, and either covered
# by the checkpoint or rejected (rejections are never replayed).
FOLDABLE = "id <= :cutoff AND (id <= :covered OR kind = 'rejected')"
LIVE_SEGMENTS = (
    "SELECT segment FROM blobs UNION SELECT segment FROM checkpoints WHERE segment IS NOT NULL"
)


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    device: str | None
    seq: int | None
    payload: bytes | None


class Ledger:
    def __init__(
        self,
        path: str | Path,
        *,
        checkpoint_every: int = 100,
        durable: bool = False,
        keep_events: int = 10_000,
    ):
        self.path = Path(path)
        self.checkpoint_every = checkpoint_every
        self.keep_events = keep_events
        self.durable = durable
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            empty = self.path.exists() and self.path.stat().st_size == 0
            had_wal = self.path.with_name(self.path.name + "-wal").exists()
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            # One caller at a time, but not always the same thread: the service resumes
            # on its own thread and then records from its intake worker.
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            open_schema(self.db, self.path, "empty" if empty else "new")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self.blobs = BlobLog(self.path.with_name(self.path.name + "-blobs"))
            self.blobs.keep(self._live_segments())  # what a crash left uncommitted
            # Left open by a writer that died, yet no -wal beside it: what that WAL held
            # (acknowledged updates since the last checkpoint) is gone.
            self.wal_lost = note_wal_lost(self.db, mark_open(self.db, True) and not had_wal)
        except (OSError, sqlite3.Error) as exc:
            what = f"cannot open ledger {self.path}"
            raise storage_failure(exc, what) or ConfigError("bad_ledger", f"{what}: {exc}") from exc
        self._since_checkpoint = self._count_since_checkpoint()
        self._rejected_since_fold = 0
        self._grouped = False  # inside transaction(): records join its one commit
        self._reclaim_due = False

    def run(self) -> tuple[RunRecord, str | None]:
        """The run this ledger belongs to, and its origin while no start check accepted
        it (``aggregator.ledger_schema``)."""
        return read_run(self.db)

    def set_run(self, record: RunRecord) -> None:
        with self._transaction():
            write_run(self.db, record)

    def close(self) -> None:
        """Close cleanly: clear the ``open`` marker (best effort: on a full disk the next
        start still finds the -wal SQLite could not fold in)."""
        with contextlib.suppress(sqlite3.Error):
            mark_open(self.db, False)
        self.db.close()
        self.blobs.close()

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
        noise: float | None = None,
    ) -> bool:
        """Commit one event (and a checkpoint when one is due); False for a known (device, seq)."""
        changes = kind != "rejected"
        checkpointed = False
        with contextlib.nullcontext() if self._grouped else self._transaction():
            if seq is not None and self._folded(device, seq):
                return False
            cur = self.db.execute(
                "INSERT OR IGNORE INTO events"
                " (kind, device, seq, reason, version, staleness, samples, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, device, seq, reason, strategy.version, staleness, samples, time.time()),
            )
            if cur.rowcount == 0:
                return False
            if changes and payload is not None:
                ref = self.blobs.append(payload)
                self.db.execute(
                    "INSERT INTO blobs (event, segment, offset, length, crc)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (cur.lastrowid, *astuple(ref)),
                )
            if kind == "applied" and noise is not None:
                self.db.execute(
                    "INSERT INTO privacy (device, z, n) VALUES (?, ?, 1)"
                    " ON CONFLICT (device, z) DO UPDATE SET n = n + 1",
                    (device, float(noise)),
                )
            if changes:
                self._since_checkpoint += 1
                if self._since_checkpoint >= self.checkpoint_every:
                    self._checkpoint(strategy, cur.lastrowid)
                    checkpointed = True
            else:
                self._rejected_since_fold += 1
                if self._rejected_since_fold >= self.checkpoint_every:
                    self._fold()  # a flood of rejections alone must not grow the file
        if checkpointed and self._grouped:
            self._reclaim_due = True
        elif checkpointed:
            self._reclaim()
        return True

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group commit: every ``record`` inside commits in this one transaction, or none.

        One commit per batch instead of one per event is what lets the intake keep up with
        the broker; the caller acknowledges the batch's messages only after this exits. On
        an error everything rolls back while the strategy in memory has moved on: rebuild
        the intake from the ledger (the daemon stops; the broker redelivers the batch).
        """
        if self._grouped:
            raise RuntimeError("ledger transactions do not nest")
        with self._transaction():
            self._grouped = True
            try:
                yield
            finally:
                self._grouped = False
        if self._reclaim_due:
            self._reclaim_due = False
            self._reclaim()

    def checkpoint(self, strategy: Strategy, also: Callable[[], None] | None = None) -> None:
        """Checkpoint now; ``also`` writes more in the same transaction (a new prep)."""
        with contextlib.nullcontext() if self._grouped else self._transaction():
            last = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            self._checkpoint(strategy, last)
            if also is not None:
                also()
        if self._grouped:
            self._reclaim_due = True
        else:
            self._reclaim()

    def _checkpoint(self, strategy: Strategy, last_event: int) -> None:
        # The state opens a new segment: once this commits, the older ones are garbage.
        self.blobs.rotate()
        ref = self.blobs.append(encode_checkpoint(strategy))
        self.blobs.sync()  # the state must outlive the segments it lets go
        self.db.execute(
            "INSERT INTO checkpoints (last_event, strategy, version, state, at,"
            f" {', '.join(CHECKPOINT_REF)}) VALUES (?, ?, ?, x'', ?, ?, ?, ?, ?)",
            (last_event, strategy.name, strategy.version, time.time(), *astuple(ref)),
        )
        self.db.execute("DELETE FROM checkpoints WHERE id < (SELECT MAX(id) FROM checkpoints)")
        self.db.execute("DELETE FROM payloads WHERE event <= ?", (last_event,))
        self.db.execute("DELETE FROM blobs WHERE event <= ?", (last_event,))
        self._since_checkpoint = 0
        self._fold()

    def _fold(self) -> None:
        """Fold old event rows into per-device last seqs and per-reason tallies."""
        (top,) = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        bounds = {"cutoff": top - self.keep_events, "covered": self._covered()}
        self.db.execute(
            "INSERT INTO devices (device, last_seq) SELECT device, MAX(seq) FROM events"
            f" WHERE device IS NOT NULL AND seq IS NOT NULL AND {FOLDABLE} GROUP BY device"
            " ON CONFLICT (device) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)",
            bounds,
        )
        self.db.execute(
            "INSERT INTO tallies (kind, reason, n) SELECT kind, COALESCE(reason, ''), COUNT(*)"
            f" FROM events WHERE {FOLDABLE} GROUP BY 1, 2"
            " ON CONFLICT (kind, reason) DO UPDATE SET n = n + excluded.n",
            bounds,
        )
        self.db.execute(f"DELETE FROM events WHERE {FOLDABLE}", bounds)
        self._rejected_since_fold = 0

    def _reclaim(self) -> None:
        """Give freed pages and segments back (after the commit: none may roll back)."""
        self.blobs.keep(self._live_segments())
        # executescript steps the pragma to the end; execute() frees just one page.
        self.db.executescript("PRAGMA incremental_vacuum;")
        # No busy wait: with a reader in the way (someone inspecting the file) this does
        # what it can without blocking, and the next checkpoint truncates the WAL.
        (timeout,) = self.db.execute("PRAGMA busy_timeout").fetchone()
        self.db.execute("PRAGMA busy_timeout = 0")
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {int(timeout)}")

    def _folded(self, device: str | None, seq: int) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM devices WHERE device IS ? AND last_seq >= ?", (device, seq)
        ).fetchone()
        return row is not None

    def _covered(self) -> int:
        """The last event the newest checkpoint covers (0 when there is none)."""
        row = self.db.execute("SELECT COALESCE(MAX(last_event), 0) FROM checkpoints").fetchone()
        return row[0]

    def _transaction(self) -> _Tx:
        return _Tx(self.db, self.blobs.sync if self.durable else None)

    def _live_segments(self) -> set[int]:
        return {row[0] for row in self.db.execute(LIVE_SEGMENTS)}

    def _count_since_checkpoint(self) -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM events WHERE id > ? AND kind != 'rejected'", (self._covered(),)
        ).fetchone()[0]

    # -- reading -----------------------------------------------------------------------

    def restore(self, template: Strategy | None = None) -> tuple[Strategy | None, list[Event]]:
        """The last checkpointed strategy (None if none) and the events to replay on it.

        With ``template`` (the configured strategy), a checkpoint of another strategy or
        model is a ConfigError ``ledger_mismatch``; a damaged one is ``bad_checkpoint``.
        """
        row = self.db.execute(
            f"SELECT last_event, state, {', '.join(CHECKPOINT_REF)} FROM checkpoints"
            " ORDER BY id DESC LIMIT 1"
        ).fetchone()
        last, strategy = (
            (0, None) if row is None else (row[0], self._decode(self._state(row), template))
        )
        rows = self.db.execute(
            "SELECT e.id, e.kind, e.device, e.seq, p.payload,"
            " b.segment, b.offset, b.length, b.crc FROM events e"
            " LEFT JOIN payloads p ON p.event = e.id LEFT JOIN blobs b ON b.event = e.id"
            " WHERE e.id > ? AND e.kind != 'rejected' ORDER BY e.id",
            (last,),
        ).fetchall()
        events = []
        for r in rows:
            payload = r[4] if r[5] is None else self.blobs.read(BlobRef(*r[5:]))
            if payload is None and r[5] is not None:
                self._lost_from(r[0], len(rows) - len(events))
                break
            events.append(Event(r[0], r[1], r[2], r[3], payload))
        if any(e.kind == "applied" and e.payload is None for e in events):
            raise ConfigError("bad_ledger", f"{self.path}: an applied update lost its payload")
        return strategy, events

    def _state(self, row: tuple) -> bytes:
        """A checkpoint's state, from its column (schema 3) or the blob log."""
        if row[2] is None:
            return row[1]
        state = self.blobs.read(BlobRef(*row[2:]))
        if state is None:
            raise ConfigError(
                "bad_checkpoint",
                f"{self.path}: the newest checkpoint's state is missing or damaged in"
                f" {self.blobs.dir}; use another --out-dir or move the ledger away",
            )
        return state

    def _lost_from(self, event: int, n: int) -> None:
        """A power cut lost payloads from ``event`` on: keep the history before it."""
        log.warning(
            "%s: %d acknowledged updates from event %d lost their payloads"
            " (a power cut?); resuming from the event before",
            self.path,
            n,
            event,
        )
        with self._transaction():
            self.db.execute("DELETE FROM blobs WHERE event >= ?", (event,))
            self.db.execute("DELETE FROM events WHERE id >= ? AND kind != 'rejected'", (event,))
            self.wal_lost = note_wal_lost(self.db, True)

    def _decode(self, blob: bytes, template: Strategy | None) -> Strategy:
        try:
            return decode_checkpoint(blob, template)
        except ConfigError as exc:
            raise ConfigError(
                exc.reason,
                f"{self.path}: {exc.message}; use another --out-dir or move the ledger away",
            ) from exc

    def last_seqs(self) -> dict[str, int]:
        return read_last_seqs(self.db)

    def privacy(self) -> dict[str, dict[str, int]]:
        """The DP spend, as ``PrivacyLedger.state()`` has it: device -> {z as text: count}."""
        return read_privacy(self.db)

    def counts(self) -> tuple[int, Counter]:
        """Updates applied, and rejections by reason, over the ledger's whole life."""
        return read_counts(self.db)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; ``before_commit`` first."""

    def __init__(self, db: sqlite3.Connection, before_commit: Callable[[], None] | None) -> None:
        self.db = db
        self.before_commit = before_commit

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not exc_type:
            try:
                if self.before_commit is not None:
                    self.before_commit()
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        elif self.db.in_transaction:  # SQLITE_FULL and SQLITE_IOERR may have rolled back
            self.db.execute("ROLLBACK")
