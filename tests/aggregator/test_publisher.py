"""What the publisher evaluates and logs: never a NaN, on the wire or in history.jsonl."""

from __future__ import annotations

import json

import numpy as np

from aggregator.intake import Snapshot
from aggregator.publisher import Publisher
from fedmq.data import Dataset
from fedmq.model import Arch, init_weights
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import AggregatorStatus

ARCH = Arch("mlp", (4, 8, 3))


def test_a_non_finite_evaluation_is_null_in_history_and_status(tmp_path):
    rng = np.random.default_rng(0)
    evalset = Dataset(rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, 3, 50))
    pub = Publisher(Topics("f"), ARCH, Hyper(), tmp_path, run="r", evalset=evalset)
    weights = {k: np.full_like(v, np.nan) for k, v in init_weights(ARCH, 0).items()}
    snap = Snapshot(3, weights, "fedasync", {}, 0, {}, 0)
    ev = pub._evaluate_and_log(snap)
    assert ev is not None and ev.loss is None
    text = (tmp_path / "history.jsonl").read_text()
    assert "NaN" not in text and json.loads(text)["loss"] is None
    status = AggregatorStatus(
        state="serving", strategy="fedasync", params={}, version=3, accepted=0, rejected={},
        last_accuracy=ev.accuracy, last_loss=ev.loss, started_at=0.0, at=0.0,
    )  # fmt: skip
    assert AggregatorStatus.decode(status.encode()).last_loss is None
