"""The ledger: resume after a crash from the last checkpoint plus the events after it."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter

import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.ledger import Ledger
from aggregator.ledger_schema import RunRecord
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from aggregator.validation import to_contribution
from fedmq.config import BrokerConfig
from fedmq.errors import ConfigError
from fedmq.model import Arch, init_weights
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import Update

ARCH = Arch("mlp", (4, 8, 3))
TOPICS = Topics("f")


def _agg(out, strategy="fedbuff", **params) -> Aggregator:
    cfg = AggregatorConfig(
        broker=BrokerConfig.from_url("mqtt://127.0.0.1:1"),
        fleet="f",
        out_dir=out,
        checkpoint_every=params.pop("checkpoint_every", 100),
    )
    return Aggregator(
        cfg, make_strategy(strategy, init_weights(ARCH, 0), 0, **params), ARCH, Hyper()
    )


def _update(device: str, seq: int, base: int = 0, scale: float = 0.01) -> bytes:
    rng = np.random.default_rng(seq)
    delta = {k: rng.standard_normal(v.shape).astype(np.float32) * scale for k, v in
             init_weights(ARCH, 0).items()}  # fmt: skip
    return Update.from_delta(
        delta, device=device, seq=seq, base_version=base, num_samples=5, steps=1, loss=0.1
    ).encode()


def _same(a: Aggregator, b: Aggregator) -> None:
    assert a.strategy.version == b.strategy.version
    assert a.strategy.pending == b.strategy.pending
    for name, value in a.strategy.weights.items():
        np.testing.assert_array_equal(value, b.strategy.weights[name])


@pytest.mark.parametrize("every", [1, 3, 100])
def test_a_restart_resumes_exactly_where_the_ledger_ends(tmp_path, every):
    live = _agg(tmp_path, k=4, checkpoint_every=every)
    for seq in range(10):
        live.handle(TOPICS.update("a"), _update("a", seq, base=live.strategy.version))
    live.handle(TOPICS.update("b"), b"garbage")
    live.handle(TOPICS.update("b"), _update("b", 0, base=99))  # future_version
    # Killed here: nothing closed, nothing flushed. A new process opens the same files.
    again = _agg(tmp_path, k=4, checkpoint_every=every)
    _same(live, again)
    assert live.strategy.version == 2 and again.strategy.pending == 2
    assert again.counters.accepted == 10
    assert again.counters.rejected == {"malformed": 1, "future_version": 1}
    # A redelivery of something already decided is recognised and changes nothing.
    assert not again.handle(TOPICS.update("a"), _update("a", 9, base=2))
    assert again.counters.rejected["duplicate_seq"] == 1
    _same(live, again)


def test_fedasync_history_survives_so_stale_updates_still_apply(tmp_path):
    live = _agg(tmp_path, "fedasync", checkpoint_every=2)
    for seq in range(5):
        live.handle(TOPICS.update("a"), _update("a", seq, base=seq))
    again = _agg(tmp_path, "fedasync", checkpoint_every=2)
    _same(live, again)
    # base 1 is 4 versions old: only the restored history can rebuild x_1 + delta.
    assert live.handle(TOPICS.update("b"), _update("b", 0, base=1))
    assert again.handle(TOPICS.update("b"), _update("b", 0, base=1))
    _same(live, again)


def test_checkpoints_bound_what_is_kept_and_replayed(tmp_path):
    live = _agg(tmp_path, "fedasync", checkpoint_every=3)
    for seq in range(10):
        live.handle(TOPICS.update("a"), _update("a", seq, base=seq))
    ledger = Ledger(tmp_path / "ledger.sqlite")
    strategy, events = ledger.restore()
    assert strategy is not None and strategy.version == 9 and len(events) == 1
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        (kept,) = db.execute("SELECT COUNT(*) FROM blobs").fetchone()
        (rows,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
    db.close()
    # One segment is left: the last checkpoint's state, then the one payload after it.
    segments = ledger.blobs.segments()
    ledger.close()
    assert (kept, rows, len(segments)) == (1, 10, 1)


def test_a_ledger_of_another_strategy_is_refused(tmp_path):
    _agg(tmp_path, "fedasync")
    with pytest.raises(ConfigError) as err:
        _agg(tmp_path, "fedbuff")
    assert err.value.reason == "ledger_mismatch"


# -- the ledger on its own: files, schema, size --------------------------------------------

OLD_SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, device TEXT,
    seq INTEGER, reason TEXT, version INTEGER NOT NULL, staleness INTEGER, samples INTEGER,
    at REAL NOT NULL, payload BLOB);
CREATE TABLE checkpoints (id INTEGER PRIMARY KEY AUTOINCREMENT, last_event INTEGER NOT NULL,
    strategy TEXT NOT NULL, version INTEGER NOT NULL, state BLOB NOT NULL, at REAL NOT NULL);
"""


def _strategy(name: str = "fedbuff"):
    return make_strategy(name, init_weights(ARCH, 0), 0)


def _on_disk(path) -> int:
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    blobs = path.with_name(path.name + "-blobs")
    return sum(f.stat().st_size for f in [*files, *blobs.iterdir()] if f.exists())


def _fill(ledger: Ledger, strategy, start: int, stop: int, devices: int = 20) -> None:
    payload = bytes(2048)  # the size of a real update of the demo's model
    for i in range(start, stop):
        ledger.record(strategy, "applied", device=f"dev-{i % devices:03d}", seq=i // devices,
                      staleness=1, samples=50, payload=payload)  # fmt: skip


def test_files_are_private_and_space_is_reclaimable(tmp_path):
    path = tmp_path / "new" / "ledger.sqlite"
    ledger = Ledger(path)
    _fill(ledger, _strategy(), 0, 10)
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    for f in (path, path.with_name("ledger.sqlite-wal"), path.with_name("ledger.sqlite-shm")):
        assert (f.stat().st_mode & 0o777) == 0o600, f
    assert ledger.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    ledger.close()


def test_steady_state_costs_under_200_bytes_per_update(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger, strategy = Ledger(path, checkpoint_every=100), _strategy()
    _fill(ledger, strategy, 0, 1000)
    before = _on_disk(path)
    _fill(ledger, strategy, 1000, 3000)
    per_update = (_on_disk(path) - before) / 2000
    assert per_update <= 200, per_update
    (payloads,) = ledger.db.execute("SELECT COUNT(*) FROM blobs").fetchone()
    assert payloads == 0  # the last checkpoint (at 3000) covers them all
    assert len(ledger.blobs.segments()) == 1  # its state; older segments are deleted
    assert ledger.db.execute("PRAGMA freelist_count").fetchone()[0] == 0  # given back
    ledger.close()


def test_folding_keeps_the_file_constant_and_the_dedupe_and_counts_exact(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger, strategy = Ledger(path, checkpoint_every=50, keep_events=100), _strategy()
    _fill(ledger, strategy, 0, 1000)
    for i in range(300):  # a flood of rejections alone folds too
        ledger.record(strategy, "rejected", device="bad", seq=i, reason="norm_bound")
    ledger.record(strategy, "flush")
    size = _on_disk(path)
    _fill(ledger, strategy, 1000, 3000)
    assert _on_disk(path) - size <= 2000 * 10  # next to nothing per update
    (rows,) = ledger.db.execute("SELECT COUNT(*) FROM events").fetchone()
    assert rows <= 100 + 50
    assert ledger.counts() == (3000, Counter({"norm_bound": 300}))
    assert ledger.last_seqs() == {"bad": 299} | {f"dev-{d:03d}": 149 for d in range(20)}
    # (device, seq) pairs folded away long ago are still known.
    assert not ledger.record(strategy, "applied", device="dev-000", seq=3, payload=b"x")
    assert not ledger.record(strategy, "rejected", device="bad", seq=5, reason="norm_bound")
    assert ledger.record(strategy, "applied", device="dev-000", seq=150, payload=b"x")
    ledger.close()


def test_a_restart_after_folding_resumes_exactly(tmp_path):
    path = tmp_path / "ledger.sqlite"
    live, ledger = _strategy("fedasync"), Ledger(path, checkpoint_every=7, keep_events=5)
    ledger.checkpoint(live)
    for seq in range(40):
        payload = _update("a", seq, base=live.version)
        live.apply(to_contribution(Update.decode(payload)))
        ledger.record(live, "applied", device="a", seq=seq, payload=payload)
    ledger.close()
    saved, events = Ledger(path).restore(_strategy("fedasync"))
    for event in events:
        saved.apply(to_contribution(Update.decode(event.payload)))
    assert saved.version == live.version == 40 and len(events) == 40 % 7
    for name, value in live.weights.items():
        np.testing.assert_array_equal(value, saved.weights[name])


def test_an_old_pickling_ledger_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    db.close()
    before = path.read_bytes()
    with pytest.raises(ConfigError) as err:
        Ledger(path)
    assert err.value.reason == "old_ledger"
    assert "move the file away" in err.value.message and str(path) in err.value.message
    assert path.read_bytes() == before


def test_a_newer_or_damaged_ledger_is_a_clear_error(tmp_path):
    newer = tmp_path / "newer.sqlite"
    Ledger(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(ConfigError) as err:
        Ledger(newer)
    assert err.value.reason == "ledger_version"
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError) as err:
        Ledger(junk)
    assert err.value.reason == "bad_ledger"


@pytest.mark.parametrize("where", ["state column", "blob log"])
def test_a_pickle_in_a_checkpoint_is_refused_not_run(tmp_path, where):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.checkpoint(_strategy())
    hostile = b"cos\nsystem\n(S'touch " + str(tmp_path / "ran").encode() + b"'\ntR."
    if where == "state column":  # as a schema 3 ledger holds it
        ledger.db.execute("UPDATE checkpoints SET state = ?, segment = NULL", (hostile,))
    else:  # written with its right length and CRC, by someone who can write the files
        ref = ledger.blobs.append(hostile)
        ledger.db.execute(
            "UPDATE checkpoints SET segment = ?, offset = ?, length = ?, crc = ?",
            (ref.segment, ref.offset, ref.length, ref.crc),
        )
    with pytest.raises(ConfigError) as err:
        ledger.restore(_strategy())
    assert err.value.reason == "bad_checkpoint" and str(path) in err.value.message
    assert not (tmp_path / "ran").exists()
    ledger.close()


def test_restore_with_the_configured_strategy_refuses_another_one(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.checkpoint(_strategy("fedasync"))
    with pytest.raises(ConfigError) as err:
        ledger.restore(_strategy("fedbuff"))
    assert err.value.reason == "ledger_mismatch"
    ledger.close()


def test_a_reader_holding_a_snapshot_does_not_stall_a_checkpoint(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger, strategy = Ledger(path, checkpoint_every=10), _strategy()
    _fill(ledger, strategy, 0, 5)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM events").fetchone()  # holds its snapshot open
    started = time.monotonic()
    _fill(ledger, strategy, 5, 10)  # the 10th commits a checkpoint
    assert time.monotonic() - started < 1.0  # sqlite's busy wait would take 5 s
    reader.execute("COMMIT")
    reader.close()
    ledger.checkpoint(strategy)
    assert path.with_name("ledger.sqlite-wal").stat().st_size == 0  # truncated once free
    ledger.close()


def test_the_ledger_may_move_to_a_worker_thread(tmp_path):
    ledger, strategy = Ledger(tmp_path / "ledger.sqlite"), _strategy()
    worker = threading.Thread(target=_fill, args=(ledger, strategy, 0, 5))
    worker.start()
    worker.join()
    assert ledger.counts()[0] == 5
    ledger.close()


_WRITER = """
import os, sys
from aggregator.ledger import Ledger
from aggregator.strategies import make_strategy
from fedmq.model import Arch, init_weights
arch = Arch("mlp", (4, 8, 3))
ledger = Ledger(sys.argv[1])
ledger.record(make_strategy("fedbuff", init_weights(arch, 0), 0), "applied", device="d", seq=1)
os.kill(os.getpid(), 9)  # dies holding the ledger: no close, its -wal stays
"""


def _killed_writer(path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _WRITER, str(path)], capture_output=True)
    assert proc.returncode == -9, proc.stderr


def test_a_lost_wal_after_a_crash_is_told_apart_from_a_clean_close_and_a_plain_crash(tmp_path):
    path = tmp_path / "ledger.sqlite"
    wal = path.with_name("ledger.sqlite-wal")
    Ledger(path).close()
    assert not wal.exists() and not Ledger(path).wal_lost  # closed cleanly: nothing lost
    _killed_writer(path)
    assert wal.exists()
    reopened = Ledger(path)  # a plain crash: SQLite recovers from the -wal
    assert not reopened.wal_lost
    assert reopened.db.execute("SELECT COUNT(*) FROM events WHERE seq = 1").fetchone() == (1,)
    reopened.close()
    _killed_writer(path)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink()
    lost = Ledger(path)
    assert lost.wal_lost  # the writer died and what its WAL held is gone
    lost.close()
    refused_again = Ledger(path)  # a refused start changed nothing: it refuses again
    assert refused_again.wal_lost
    refused_again.set_run(RunRecord("0123456789abcdef"))  # a start check accepted it
    refused_again.close()
    assert not Ledger(path).wal_lost
