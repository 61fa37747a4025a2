"""The intake engine, the deadline policy and the history file, without a broker."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.deadline import Deadline
from aggregator.history import History
from aggregator.intake import Intake
from aggregator.ledger import Ledger
from aggregator.publisher import make_out_dir
from aggregator.strategies import make_strategy
from fedmq.model import Arch, init_weights
from fedmq.topics import Topics
from fedmq.wire import Update

ARCH = Arch("mlp", (4, 8, 3))
TOPICS = Topics("f")


def _intake(strategy: str = "fedbuff", ledger: Ledger | None = None, **params) -> Intake:
    return Intake(TOPICS, ARCH, make_strategy(strategy, init_weights(ARCH, 0), 0, **params),
                  ledger=ledger)  # fmt: skip


def _update(device: str, seq: int, base: int = 0, encoding: str = "f32") -> bytes:
    delta = {k: np.full_like(v, 0.01) for k, v in init_weights(ARCH, 0).items()}
    return Update.from_delta(
        delta, encoding=encoding, device=device, seq=seq, base_version=base,
        num_samples=5, steps=1, loss=0.1,
    ).encode()  # fmt: skip


def test_outcomes_say_applied_new_version_or_why_not():
    intake = _intake(k=2)
    first = intake.handle(TOPICS.update("a"), _update("a", 0))
    assert (first.applied, first.new_version, first.version, first.reason) == (True, False, 0, None)
    second = intake.handle(TOPICS.update("b"), _update("b", 0, encoding="q8"))
    assert (second.applied, second.new_version, second.version) == (True, True, 1)
    replay = intake.handle(TOPICS.update("b"), _update("b", 0))
    assert replay.rejected and replay.reason == "duplicate_seq" and replay.device == "b"
    spoof = intake.handle(TOPICS.update("a"), _update("b", 5))
    assert spoof.reason == "identity_mismatch" and not spoof.applied
    future = intake.handle(TOPICS.update("a"), _update("a", 1, base=9))
    assert future.reason == "future_version" and future.version == 1
    assert intake.counters.accepted == 2
    assert intake.counters.rejected == {
        "duplicate_seq": 1,
        "identity_mismatch": 1,
        "future_version": 1,
    }


def test_the_deadline_flush_closes_a_partial_buffer_once():
    intake = _intake(k=5)
    intake.handle(TOPICS.update("a"), _update("a", 0))
    flushed = intake.flush()
    assert flushed.new_version and flushed.version == 1 and not flushed.applied
    assert not intake.flush().new_version  # nothing pending: no version


def test_a_snapshot_hands_each_changed_device_ledger_out_once():
    intake = _intake(k=5)
    intake.handle(TOPICS.update("a"), _update("a", 0))
    intake.handle(TOPICS.update("b"), b"garbage")
    snap = intake.snapshot(ledgers=True)
    assert [ledger.device for ledger in snap.ledgers] == ["a", "b"]
    assert (snap.accepted, snap.rejected, snap.version) == (1, {"malformed": 1}, 0)
    assert intake.snapshot(ledgers=True).ledgers == []
    assert snap.bytes_in == intake.counters.bytes_in > 0


def test_a_new_intake_resumes_from_the_ledger(tmp_path):
    live = _intake("fedasync", Ledger(tmp_path / "ledger.sqlite", checkpoint_every=2))
    for seq in range(5):
        live.handle(TOPICS.update("a"), _update("a", seq, base=seq))
    again = _intake("fedasync", Ledger(tmp_path / "ledger.sqlite", checkpoint_every=2))
    assert again.strategy.version == live.strategy.version == 5
    for name, value in live.strategy.weights.items():
        np.testing.assert_array_equal(value, again.strategy.weights[name])
    assert again.handle(TOPICS.update("a"), _update("a", 4, base=5)).reason == "duplicate_seq"
    assert again.counters.accepted == 5


def test_topk_updates_apply_sparse_and_a_bad_index_is_a_counted_rejection(tmp_path):
    # FedBuff adds the mean delta, so a coordinate nobody sent stays bit for bit the same.
    live = _intake("fedbuff", Ledger(tmp_path / "ledger.sqlite", checkpoint_every=10), k=1)
    start = {k: v.copy() for k, v in live.strategy.weights.items()}
    sent = Update.decode(_update("a", 0, encoding="topk:0.25"), shapes=ARCH.param_shapes())
    bad = {**sent.indices, "w0": np.array([*sent.indices["w0"][:-1], 32], np.uint16)}  # 4x8
    outcome = live.handle(TOPICS.update("a"), dataclasses.replace(sent, indices=bad).encode())
    assert outcome.reason == "bad_value" and live.counters.rejected == {"bad_value": 1}
    assert live.handle(TOPICS.update("a"), sent.encode()).applied
    for name, value in live.strategy.weights.items():  # moved exactly where a value was sent
        moved = np.flatnonzero(value.reshape(-1) != start[name].reshape(-1))
        np.testing.assert_array_equal(moved, sent.indices[name])
    again = _intake("fedbuff", Ledger(tmp_path / "ledger.sqlite", checkpoint_every=10), k=1)
    assert again.strategy.version == live.strategy.version == 1
    for name, value in live.strategy.weights.items():  # the ledger replays topk too
        np.testing.assert_array_equal(value, again.strategy.weights[name])


def test_under_the_trimmed_mean_a_coordinate_one_topk_device_sent_still_moves():
    live = _intake("fedbuff", k=5, defence=True)  # trim 0.2 of 5: one cut at each end
    start = {k: v.copy() for k, v in live.strategy.weights.items()}
    for i in range(5):
        delta = {k: np.zeros_like(v) for k, v in start.items()}
        delta["w0"].reshape(-1)[6 * i : 6 * i + 6] = 1.0  # 6 of the 8 topk:0.25 sends
        payload = Update.from_delta(
            delta, encoding="topk:0.25", device=f"d{i}", seq=0, base_version=0,
            num_samples=5, steps=1, loss=0.1,
        ).encode()  # fmt: skip
        assert live.handle(TOPICS.update(f"d{i}"), payload).applied
    assert live.strategy.version == 1
    moved = live.strategy.weights["w0"].reshape(-1) - start["w0"].reshape(-1)
    # each one device's of five: 1.0 / 5, where a vote of the other four for 0 cut it to 0
    np.testing.assert_allclose(moved[:30], 0.2, rtol=1e-6)
    np.testing.assert_array_equal(moved[30:], 0.0)


@settings(max_examples=200, deadline=None)
@given(topic=st.text(max_size=40), payload=st.binary(max_size=512))
def test_any_bytes_on_any_topic_are_refused_and_change_nothing(topic, payload):
    intake = _intake(k=1)
    before = {k: v.copy() for k, v in intake.strategy.weights.items()}
    outcome = intake.handle(topic, payload)
    assert outcome.rejected and not outcome.applied and not outcome.new_version
    assert intake.strategy.version == 0
    for name, value in before.items():
        np.testing.assert_array_equal(value, intake.strategy.weights[name])


def test_the_deadline_fires_after_its_time_and_restarts_either_way():
    d = Deadline(5.0, now=0.0)
    assert not d.expired(4.9) and d.expired(5.0) and d.due_at == 5.0
    d.versioned(3.0)
    assert not d.expired(7.9) and d.expired(8.0)
    assert d.fire(8.0, lambda: False) is False  # an empty round: wait a full deadline more
    assert d.due_at == 13.0 and not d.expired(12.0)
    assert d.fire(13.0, lambda: True) is True
    assert d.due_at == 18.0
    never = Deadline(None, now=0.0)
    assert never.due_at is None and not never.expired(1e12)


def test_history_rotates_and_keeps_every_line_it_still_holds(tmp_path):
    path = tmp_path / "history.jsonl"
    history = History(path, max_bytes=200, keep=2)
    for version in range(40):
        history.append({"version": version, "pad": "x" * 20})
    files = [path, path.with_name("history.jsonl.1"), path.with_name("history.jsonl.2")]
    assert all(f.exists() for f in files)
    assert not path.with_name("history.jsonl.3").exists()
    assert all(f.stat().st_size < 200 + 60 for f in files)  # bounded: at most one line over
    lines = [json.loads(line) for f in reversed(files) for line in f.read_text().splitlines()]
    versions = [line["version"] for line in lines]
    assert versions == list(range(versions[0], 40))  # in order, the newest last, no gap


def test_the_out_dir_is_private_to_its_user(tmp_path):
    out = tmp_path / "runs" / "aggregator"
    make_out_dir(out)
    assert out.stat().st_mode & 0o777 == 0o700


def test_a_batch_commits_once_and_resumes_like_single_updates(tmp_path):
    path = tmp_path / "ledger.sqlite"
    live = _intake("fedasync", Ledger(path, checkpoint_every=3))
    batch = [(TOPICS.update("a"), _update("a", seq, base=seq)) for seq in range(7)]
    batch.insert(3, (TOPICS.update("a"), _update("a", 2, base=3)))  # a redelivery
    seen: list[int] = []

    def watch(sql: str) -> None:
        seen.append(1) if sql.strip().upper() == "COMMIT" else None

    live.ledger.db.set_trace_callback(watch)
    outcomes = live.handle_batch(batch)
    live.ledger.db.set_trace_callback(None)
    assert [o.applied for o in outcomes] == [True] * 3 + [False] + [True] * 4
    assert outcomes[3].reason == "duplicate_seq"
    assert len(seen) == 1  # one commit for the batch, checkpoints included
    again = _intake("fedasync", Ledger(path, checkpoint_every=3))
    assert again.strategy.version == live.strategy.version == 7
    for name, value in live.strategy.weights.items():
        np.testing.assert_array_equal(value, again.strategy.weights[name])


def test_a_batch_that_fails_leaves_none_of_its_records(tmp_path):
    path = tmp_path / "ledger.sqlite"
    live = _intake("fedasync", Ledger(path, checkpoint_every=100))
    live.handle(TOPICS.update("a"), _update("a", 0))
    with pytest.raises(ZeroDivisionError), live.ledger.transaction():
        live.handle(TOPICS.update("a"), _update("a", 1, base=1))
        raise ZeroDivisionError  # e.g. the disk filled up before the commit
    again = _intake("fedasync", Ledger(path, checkpoint_every=100))
    assert again.strategy.version == 1  # the broker, never acked, delivers seq 1 again
    assert again.handle(TOPICS.update("a"), _update("a", 1, base=1)).applied
