"""The ledger: resume after a crash from the last checkpoint plus the events after it."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.ledger import Ledger
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
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
        (kept,) = db.execute("SELECT COUNT(*) FROM payloads").fetchone()
        (rows,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
    db.close()
    ledger.close()
    assert (kept, rows) == (1, 10)


def test_a_ledger_of_another_strategy_is_refused(tmp_path):
    _agg(tmp_path, "fedasync")
    with pytest.raises(ConfigError) as err:
        _agg(tmp_path, "fedbuff")
    assert err.value.reason == "ledger_mismatch"
