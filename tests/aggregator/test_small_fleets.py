"""Small fleets over a real Mosquitto with real agents: K_eff, and raw data standardized.

The raw-data figures (the issue's "must show") print with ``-s``:

    .venv/bin/python -m pytest -s -p no:cacheprovider tests/aggregator/test_small_fleets.py
"""

from __future__ import annotations

import json

import fleet_run
import numpy as np
import pytest

from fedmq.data import Dataset, load_csv
from fedmq.model import Arch
from fedmq.training import Hyper
from tools.sim.rawdata import centralized_logreg, raw_digits, sensor_readings, write_fleet_csvs

pytestmark = pytest.mark.broker


def _shards(n: int, seed: int = 0) -> list[Dataset]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3 * n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)
    return [Dataset(x[i::3], y[i::3]) for i in range(3)]


async def test_three_devices_make_a_version_per_three_updates(mosquitto, fleet, tmp_path):
    """K = 10 is the maximum; with 3 devices online K_eff = 3, not one version per deadline."""
    run = await fleet_run.run_fleet(
        mosquitto.url,
        fleet,
        tmp_path,
        Arch("mlp", (4, 8, 3)),
        _shards(40),
        versions=4,
        hyper=Hyper(),
        params={"k": 10},
        round_deadline=60.0,  # a deadline flush would take a minute: none happens here
        stats_quorum=3,  # every device's statistics first: no re-parameterized versions
        timeout=45.0,
    )
    strategy = run.aggregator.strategy
    counters = run.aggregator.counters
    assert strategy.k == 10 and strategy.k_eff == 3
    assert strategy.version >= 4 and run.seconds < 45
    assert counters.accepted - strategy.pending == 3 * strategy.version, (
        counters.accepted,
        strategy.pending,
        strategy.version,
    )
    assert sum(counters.rejected.values()) == 0


# -- raw data: centralized, before (no standardization), after -------------------------

SETS = {
    # name: (table, arch, hyper, versions)
    "sensors": (lambda: sensor_readings(), Arch("mlp", (8, 3)), Hyper(lr=0.1, epochs=2), 40),
    "digits": (raw_digits, Arch("mlp", (64, 10)), Hyper(lr=0.05, epochs=2), 40),
}


def _files(name: str, tmp_path):
    make = SETS[name][0]
    fleet_files = write_fleet_csvs(tmp_path / name, make(), devices=5, alpha=0.5, seed=0)
    shards = [load_csv(p, schema=fleet_files.schema) for p in fleet_files.devices]
    test = load_csv(fleet_files.test, schema=fleet_files.schema)
    return fleet_files, shards, test


async def _federated(url, fleet, out, name, shards, test, *, standardize: bool) -> float:
    _, arch, hyper, versions = SETS[name]
    run = await fleet_run.run_fleet(
        url,
        fleet,
        out,
        arch,
        shards,
        versions=versions,
        hyper=hyper,
        evalset=test,
        standardize=standardize,
        stats_quorum=len(shards),
        export_onnx=False,
        timeout=180.0,
    )
    agg = run.aggregator
    if standardize:  # ONNX on raw rows agrees with the aggregator's evaluation
        _onnx_agrees(agg, test)
    return agg.last_eval.accuracy


def _onnx_agrees(agg, test: Dataset) -> None:
    ort = pytest.importorskip("onnxruntime")
    from aggregator.publisher import _onnx_bytes
    from fedmq.wire import GlobalModel

    snap = agg.intake.snapshot(publish=True)
    model = GlobalModel.build(snap.version, agg.intake.arch, snap.weights, agg.publisher.hyper,
                              run=agg.publisher.run, prep=snap.prep)  # fmt: skip
    session = ort.InferenceSession(_onnx_bytes(model), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"x": test.x})[0]
    ev = agg.publisher._evaluate(snap.version, snap.weights, snap.prep)
    assert float(np.mean(logits.argmax(1) == test.y)) == pytest.approx(ev.accuracy, abs=1e-9)


@pytest.mark.parametrize(("name", "known"), [("sensors", 0.9567), ("digits", 0.9556)])
async def test_raw_data_learns_within_3_points_of_centralized(
    mosquitto, fleet, tmp_path, name, known
):
    fleet_files, shards, test = _files(name, tmp_path)
    central = centralized_logreg(fleet_files.devices, fleet_files.test, fleet_files.schema)
    assert central == pytest.approx(known, abs=1e-4)
    before = await _federated(
        mosquitto.url, fleet, tmp_path / "before", name, shards, test, standardize=False
    )
    after = await _federated(
        mosquitto.url, f"{fleet[:56]}-std", tmp_path / "after", name, shards, test, standardize=True
    )
    majority = float(np.bincount(test.y).max() / len(test.y))
    print(json.dumps({"data": name, "centralized": central, "before": before,
                      "after": after, "majority": majority}))  # fmt: skip
    assert after >= central - 0.03, (name, central, before, after)
    if name == "sensors":  # raw units: far from it (with fedmq's defaults, the majority)
        assert before < central - 0.2, (before, majority)
