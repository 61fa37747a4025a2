"""What fleet show and model show print for a person, and the ε they show once DP is on."""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from fedmq.model import Arch, init_weights
from fedmq.preprocess import Standardizer
from fedmq.schema import Schema
from fedmq.training import Hyper
from fedmq.wire import DeviceLedger, GlobalModel, new_run
from tests.tools.ops.test_retained import NOW, aggregator, ledger, status
from tools.cli.fleet import device_text, table
from tools.ops.fleet import FleetSnapshot
from tools.ops.jsonify import plain
from tools.ops.model import summary


def _snap(**ledgers: DeviceLedger) -> FleetSnapshot:
    snap = FleetSnapshot(aggregator=aggregator(version=12))
    snap.statuses = {d: status(d) for d in ("pi-1", "pi-2")}
    snap.ledgers = dict(ledgers)
    return snap


def _rendered(renderable) -> str:
    from rich.console import Console

    console = Console(width=250, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_fleet_show_prints_the_row_the_full_status_and_the_contributions():
    snap = _snap(**{"pi-1": ledger("pi-1")})
    doc = {**snap.row("pi-1"), "status": plain(snap.statuses["pi-1"])}
    doc["contributions"] = plain(snap.ledgers["pi-1"])
    text = device_text(doc, now=NOW + 5)
    first, *rest = text.splitlines()
    assert first == "pi-1: idle, model v3, 9 version(s) behind, last seen 4s ago"
    assert "  rejected       norm_bound 2" in rest
    assert "status (retained by the device)" in rest and "  rss            30000000" in rest
    assert "contributions (the aggregator's ledger)" in rest
    assert any(x.startswith("  first_seen     2023-11-14T22:12:20+00:00 (65s ago)") for x in rest)
    assert "epsilon" not in text  # DP off: no ε line


def test_fleet_show_of_a_device_the_aggregator_has_no_ledger_for():
    snap = _snap()
    doc = {**snap.row("pi-2"), "status": plain(snap.statuses["pi-2"]), "contributions": None}
    assert "contributions (the aggregator's ledger): none" in device_text(doc, now=NOW)


def test_the_epsilon_column_appears_only_when_a_ledger_carries_it():
    off = _snap(**{"pi-1": ledger("pi-1")})
    assert off.row("pi-1")["epsilon"] is None
    assert "epsilon" not in _rendered(table(off.rows(), off, now=NOW))
    base = dataclasses.asdict(ledger("pi-1"))
    on = _snap(**{"pi-1": DeviceLedger(**base | {"epsilon": 1.25})})
    assert on.row("pi-1")["epsilon"] == 1.25 and on.row("pi-2")["epsilon"] is None
    text = _rendered(table(on.rows(), on, now=NOW))
    assert "epsilon" in text and "1.25" in text
    doc = {**on.row("pi-1"), "status": None, "contributions": None}
    assert "  epsilon        1.25" in device_text(doc, now=NOW)


def test_model_show_carries_the_fleets_epsilon_when_the_status_does():
    arch = Arch("mlp", (2, 3, 2))
    model = GlobalModel.build(12, arch, init_weights(arch, 0), Hyper(), run=new_run())
    assert summary(model, aggregator())["epsilon"] is None
    assert summary(model, None)["epsilon"] is None
    with_dp = dataclasses.replace(aggregator(), epsilon=3.5)
    assert summary(model, with_dp)["epsilon"] == 3.5


def test_model_show_gives_the_standardization_per_named_feature():
    schema = Schema(("temp", "lux"), "kind", "classification", ("a", "b"))
    arch = Arch("mlp", (2, 3, 2), schema=schema)
    prep = Standardizer(np.array([20.0, 900.0]), np.array([4.0, 250.0]))
    model = GlobalModel.build(3, arch, init_weights(arch, 0), Hyper(), run=new_run(), prep=prep)
    per_feature = {"temp": {"mean": 20.0, "scale": 4.0}, "lux": {"mean": 900.0, "scale": 250.0}}
    assert summary(model, None)["preprocess"] == {"standardize": per_feature}
    bare = Arch("mlp", (2, 3, 2))
    plain_model = GlobalModel.build(3, bare, init_weights(bare, 0), Hyper(), run=new_run())
    assert summary(plain_model, None)["preprocess"] is None
