"""The gate inside the intake: on by default, refusals replayed exactly, logged once a minute."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.intake import Intake
from aggregator.ledger import Ledger
from aggregator.service import Aggregator
from aggregator.strategies import ModelGate, make_strategy
from aggregator.strategies.gate import EVAL_ROWS, eval_loss
from aggregator.strategies.state import encode_checkpoint
from edge_agent.state import SeqStore
from fedmq.config import BrokerConfig
from fedmq.data import Dataset
from fedmq.model import Arch, init_weights, loss
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import Update

ARCH = Arch("mlp", (4, 8, 3))
TOPICS = Topics("f")


def _intake(name: str, ledger: Ledger | None = None, gate: ModelGate | None = None, **params):
    strategy = make_strategy(name, init_weights(ARCH, 0), 0, **params)
    return Intake(TOPICS, ARCH, strategy, ledger=ledger, gate=gate)


def _send(intake: Intake, device: str, seq: int, value: float = 0.01):
    """An update of ``value`` everywhere, trained on the current version."""
    delta = {k: np.full_like(v, value) for k, v in init_weights(ARCH, 0).items()}
    payload = Update.from_delta(
        delta, device=device, seq=seq, base_version=intake.strategy.version,
        num_samples=5, steps=1, loss=0.1,
    ).encode()  # fmt: skip
    return intake.handle(TOPICS.update(device), payload)


def _state(intake: Intake) -> bytes:
    return encode_checkpoint(intake.strategy)


def test_the_intake_gates_every_candidate_by_default():
    intake = _intake("fedasync")  # no defence: nothing screens the delta itself
    before = {k: v.copy() for k, v in intake.strategy.weights.items()}
    out = _send(intake, "evil", 0, 1e30)  # finite, and fits float32
    assert (out.reason, out.applied, out.version) == ("model_rejected", False, 0)
    assert "max |w|" in out.message
    assert intake.strategy.gate is intake.gate
    for k, v in intake.strategy.weights.items():
        assert v.tobytes() == before[k].tobytes()
    assert _send(intake, "a", 0).new_version  # training goes on from the last good model
    assert intake.counters.rejected == {"model_rejected": 1}


# Each case: the strategy, and its settings such that the bomb completes a candidate
# after two honest updates are pending (none pending for FedAsync).
CASES = {
    "fedbuff": {"k": 3},
    "fedavg": {"clients_per_round": 3},
    "fedasync": {},
    "fedbuff-defended": {"k": 3, "defence": True, "norm_mode": "off", "trim": 0.0},
}


# Two honest updates, the bomb, and two honest updates after it.
SENDS = [("a", 0, 0.01), ("b", 0, 0.01), ("c", 0, 1e30), ("a", 1, 0.01), ("b", 1, 0.01)]


@pytest.mark.parametrize("checkpoint_every", [100, 2])
@pytest.mark.parametrize("case", CASES)
def test_a_refused_candidate_replays_exactly_after_a_restart(tmp_path, case, checkpoint_every):
    name, params = case.split("-")[0], CASES[case]

    def opened() -> Intake:
        ledger = Ledger(tmp_path / "ledger.sqlite", checkpoint_every=checkpoint_every)
        return _intake(name, ledger, **params)

    live = opened()
    outcomes = [_send(live, device, seq, value) for device, seq, value in SENDS]
    assert [o.reason for o in outcomes] == [None, None, "model_rejected", None, None]
    assert live.strategy.pending == (0 if name == "fedasync" else 2)  # pending after the discard
    state, version = _state(live), live.strategy.version
    live.close()

    again = opened()
    assert _state(again) == state  # the same weights (bit for bit), buffers and version
    assert again.strategy.version == version
    assert again.counters.rejected == {"model_rejected": 1}
    assert again.validator.last_seq == {"a": 1, "b": 1, "c": 0}
    assert _send(again, "c", 0).reason == "duplicate_seq"
    # And it goes on as a run without the restart does.
    reference = _intake(name, **params)
    for device, seq, value in SENDS:
        _send(reference, device, seq, value)
    for intake in (reference, again):
        _send(intake, "d", 0)
    assert _state(again) == _state(reference)
    again.close()


def test_a_refused_deadline_flush_is_a_discard_replayed_too(tmp_path):
    def opened() -> Intake:
        return _intake("fedbuff", Ledger(tmp_path / "ledger.sqlite"), k=5)

    live = opened()
    _send(live, "a", 0)
    _send(live, "evil", 0, 1e30)  # buffered: the candidate comes with the deadline
    flushed = live.flush()
    assert (flushed.reason, flushed.new_version, flushed.device) == ("model_rejected", False, None)
    assert live.strategy.pending == 0
    _send(live, "b", 0)
    state = _state(live)
    live.close()
    again = opened()
    assert _state(again) == state and again.strategy.pending == 1
    assert again.counters.rejected == {"model_rejected": 1}
    again.close()


def test_model_rejected_is_logged_once_a_minute_with_a_count_of_the_rest(caplog):
    intake = _intake("fedasync")
    now = [0.0]
    intake.counters.rejections.clock = lambda: now[0]
    with caplog.at_level(logging.WARNING, logger="fedmq.aggregator"):
        for seq in range(3):
            assert _send(intake, "evil", seq, 1e30).reason == "model_rejected"
        first = [r.getMessage() for r in caplog.records]
        assert len(first) == 1 and "refused" in first[0] and "evil" in first[0]
        now[0] = 61.0  # a minute later
        _send(intake, "evil", 3, 1e30)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # the summary of the two not logged, then the new minute's first
    assert "rejected 2 more update(s) [model_rejected]" in lines[1]
    assert intake.counters.rejected == {"model_rejected": 4}


def _evalset(rows: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(rng.normal(size=(rows, 4)).astype(np.float32), rng.integers(1, 3, rows))


def test_the_loss_check_uses_at_most_512_rows_of_the_eval_set():
    data, weights = _evalset(2000), init_weights(ARCH, 0)
    value = eval_loss(ARCH, data)(weights)
    assert EVAL_ROWS == 512
    assert value == loss(ARCH, weights, data.x[:512], data.y[:512])
    assert value != loss(ARCH, weights, data.x, data.y)
    small = _evalset(100)
    assert eval_loss(ARCH, small)(weights) == loss(ARCH, weights, small.x, small.y)


def test_an_exploding_eval_loss_is_refused_from_the_first_candidate():
    gate = ModelGate(evaluate=eval_loss(ARCH, _evalset(600)))
    intake = _intake("fedasync", gate=gate)
    start = loss(ARCH, init_weights(ARCH, 0), *(lambda d: (d.x[:512], d.y[:512]))(_evalset(600)))
    assert gate.last_good_loss == pytest.approx(start)  # the starting model is the last good
    delta = {k: np.zeros_like(v) for k, v in init_weights(ARCH, 0).items()}
    delta["b1"][:] = [100.0, -100.0, -100.0]  # every row now says class 0; labels are 1 or 2
    payload = Update.from_delta(
        delta, device="evil", seq=0, base_version=0, num_samples=5, steps=1, loss=0.1
    ).encode()
    out = intake.handle(TOPICS.update("evil"), payload)
    assert out.reason == "model_rejected" and "exploded" in out.message
    assert _send(intake, "a", 0).new_version


def test_the_daemon_builds_its_gate_from_settings_and_shows_them_in_its_status(tmp_path):
    cfg = AggregatorConfig(
        broker=BrokerConfig.from_url("mqtt://127.0.0.1:1"), fleet="f", out_dir=tmp_path,
        ledger=False, gate_max_weight=50.0, gate_loss_factor=3.0, gate_loss_margin=0.5,
    )  # fmt: skip
    agg = Aggregator(cfg, make_strategy("fedasync", init_weights(ARCH, 0)), ARCH, Hyper(),
                     evalset=_evalset(600))  # fmt: skip
    try:
        params = agg._status("serving").params
        assert (params["gate_max_weight"], params["gate_loss_factor"]) == (50.0, 3.0)
        assert params["gate_loss_margin"] == 0.5 and params["alpha"] == 0.6
        assert agg.intake.gate.evaluate is not None
        assert agg.intake.gate.last_good_loss is not None
    finally:
        agg.close()


@pytest.mark.parametrize("name", ["gate_max_weight", "gate_loss_factor", "gate_loss_margin"])
def test_bad_gate_settings_are_refused(name):
    from fedmq.errors import ConfigError

    with pytest.raises(ConfigError, match=name):
        AggregatorConfig(broker=BrokerConfig.from_url("mqtt://h"), **{name: -1.0})


def test_a_refused_seq_is_in_the_device_ledger_so_a_restarted_agent_resyncs_past_it(tmp_path):
    intake = _intake("fedasync", defence=True)
    assert _send(intake, "a", 0).applied
    assert _send(intake, "a", 1, 1e3).reason == "norm_bound"  # seq 1 is spent: dedupe holds
    (ledger,) = intake.snapshot(ledgers=True).ledgers
    assert (ledger.accepted, ledger.last_seq) == (1, 1)
    store = SeqStore(tmp_path / "lost")  # the agent lost its state file
    store.resync(ledger.last_seq)
    assert _send(intake, "a", store.reserve()).applied


def test_a_restarted_intake_judges_the_next_candidate_as_before(tmp_path):
    data = _evalset(600)

    def opened() -> Intake:
        gate = ModelGate(evaluate=eval_loss(ARCH, data))
        return _intake("fedasync", Ledger(tmp_path / "ledger.sqlite", checkpoint_every=2), gate)

    live = opened()
    for seq in range(3):
        _send(live, "a", seq)
    good = live.gate.last_good_loss
    live.close()
    again = opened()
    assert again.gate.last_good_loss == good  # the loss of the model it resumed with
    assert again.strategy.gate is again.gate
    again.close()
