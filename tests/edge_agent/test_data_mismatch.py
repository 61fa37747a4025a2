"""A device checks its own CSV against the model it receives (real Mosquitto).

Each mismatch is a retained ``error`` status with its reason and one line, never a
traceback and never a status stuck at ``training``; a model that fits then trains.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import tests.edge_agent.agent_helpers as h
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.data import LocalData
from fedmq.config import BrokerConfig
from fedmq.model import Arch, init_weights
from fedmq.schema import Schema
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import GlobalModel, Update

FEATURES = ("temp_c", "lux")
GOOD = Schema(FEATURES, "activity", "classification", ("idle", "run", "walk"))


def _csv(path: Path, labels: list[str], header: str = "lux,activity,temp_c") -> Path:
    rows = [f"{1000 + 10 * i},{lab},{20 + i % 7}" for i, lab in enumerate(labels)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _model(version: int, arch: Arch) -> bytes:
    weights = init_weights(arch, version)
    return GlobalModel.build(version, arch, weights, Hyper(), run=h.RUN, created_at=1.0).encode()


def _with(schema: Schema, hidden: int = 4) -> Arch:
    return Arch("mlp", (schema.n_features, hidden, schema.n_outputs), schema=schema)


TEXT = ["idle", "run", "walk"] * 10
CASES = {
    # reason: (labels in the file, task flag, the model refused)
    "unknown_class": (
        TEXT,
        "classification",
        _with(Schema(FEATURES, "activity", "classification", ("idle", "run"))),
    ),
    "missing_feature": (
        TEXT,
        "classification",
        _with(Schema((*FEATURES, "rpm"), "activity", "classification", GOOD.classes)),
    ),
    "extra_feature": (
        TEXT,
        "classification",
        _with(Schema(("lux",), "activity", "classification", GOOD.classes)),
    ),
    # Without a schema: integer labels beyond the model's classes ...
    "unknown_class_plain": (["0", "1", "2", "3"] * 8, "classification", Arch("mlp", (2, 4, 3))),
    # ... and --task regression against a classifier.
    "wrong_task": (["0.5", "1.5"] * 15, "regression", Arch("mlp", (2, 4, 3))),
    # Text class names and a model that brings no schema to read them.
    "needs_schema": (TEXT, "classification", Arch("mlp", (2, 4, 3))),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_data_mismatch_is_an_error_status_then_a_fitting_model_trains(
    broker, fleet, tmp_path, case
):
    labels, task, refused = CASES[case]
    path = _csv(tmp_path / "local.csv", labels)
    cfg = AgentConfig(
        broker=BrokerConfig.from_url(broker.url),
        device="pi-1",
        fleet=fleet,
        state_dir=tmp_path / "state",
        seed=1,
        label="activity",
        task=task,
    )
    agent = Agent(cfg, LocalData.open(path, "activity", task))
    topics = Topics(fleet)
    status = topics.device_status("pi-1")
    fits = (
        _with(GOOD)
        if labels is TEXT
        else Arch("linear", (2, 1))
        if task == "regression"
        else Arch("mlp", (2, 4, 4))
    )
    async with h.client(broker.url, topics.updates_filter, status) as observer:
        await observer.publish(topics.model_global, _model(3, refused), qos=1, retain=True)
        stop = asyncio.Event()
        task_ = asyncio.create_task(agent.run(stop))
        error = await h.while_running(task_, h.status_until(observer, status, "error"))
        await observer.publish(topics.model_global, _model(4, fits), qos=1, retain=True)
        update = Update.decode(
            bytes((await h.next_message(observer, topics.updates_filter)).payload)
        )
        idle = await h.status_until(observer, status, "idle")
        stop.set()
        await task_
    assert error.reason == case.removesuffix("_plain")
    assert error.message and "\n" not in error.message and "Traceback" not in error.message
    assert update.base_version == 4 and update.num_samples == len(labels)
    assert idle.reason is None and idle.model_version == 4


def test_text_labels_wait_for_a_schema_but_a_damaged_feature_cell_stops_the_agent(tmp_path):
    from fedmq.errors import DataError

    waiting = LocalData.open(_csv(tmp_path / "ok.csv", TEXT), "activity", "classification")
    assert waiting.plain is None and waiting.samples == 0
    assert len(waiting.for_model(_with(GOOD), 1)) == len(TEXT)
    bad = tmp_path / "bad.csv"
    bad.write_text("lux,activity,temp_c\n1000,idle,warm\n1010,run,21\n")
    with pytest.raises(DataError) as err:
        LocalData.open(bad, "activity", "classification")
    assert "temp_c" in str(err.value) and err.value.reason == "bad_value"
