"""Client-level DP in ``fedmq simulate``: devices clip and noise as agents do (the shared
``train_local``), the defences accept them, and ε is the aggregator's accountant's."""

from __future__ import annotations

import json

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant
from typer.testing import CliRunner

from tools.cli import app
from tools.sim.simulate import SimConfig, _Simulation

FLEET = dict(devices=10, partition="dirichlet:0.3", strategy="fedbuff", budget=1.0)


def _reference(z: float, n: int, delta: float) -> float:
    acc = RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(z), n)
    return acc.get_epsilon(delta)


def test_noised_updates_pass_the_defences_and_each_device_spends_its_own_epsilon():
    cfg = SimConfig(**FLEET, hyper={"dp_clip": 0.5, "dp_noise": 1.0}, dp_delta=1e-5)
    assert cfg.defence  # the default
    sim = _Simulation(cfg, None)
    out = sim.run().to_dict()
    assert out["rejected_by_reason"] == {} and out["updates_applied"] > 50
    dp = out["dp"]
    counts = {d.name: sim.intake.counters.ledger(d.name).accepted for d in sim.devices}
    busiest = max(counts.values())
    assert dp["epsilon_fleet"] == pytest.approx(_reference(1.0, busiest, 1e-5), abs=1e-4)
    assert dp["epsilon_device_max"] == dp["epsilon_fleet"]
    assert dp["epsilon_device_min"] <= dp["epsilon_device_median"] <= dp["epsilon_fleet"]
    assert dp["devices_spending"] == sum(n > 0 for n in counts.values())
    assert (dp["clip"], dp["noise"], dp["delta"]) == (0.5, 1.0, 1e-5)


def test_noise_changes_the_run_and_clipping_alone_reports_no_epsilon():
    clipped = _Simulation(SimConfig(**FLEET, hyper={"dp_clip": 0.5}), None).run().to_dict()
    noised = (
        _Simulation(SimConfig(**FLEET, hyper={"dp_clip": 0.5, "dp_noise": 2.0}), None)
        .run()
        .to_dict()
    )
    assert clipped["dp"]["epsilon_fleet"] is None  # no noise: no guarantee, not ε = 0
    assert clipped["rejected_by_reason"] == {} == noised["rejected_by_reason"]
    assert noised["test_accuracy"] < clipped["test_accuracy"]
    plain = _Simulation(SimConfig(**FLEET), None).run().to_dict()
    assert plain["dp"] is None


def test_the_command_line_takes_the_policy_and_prints_epsilon():
    result = CliRunner().invoke(
        app,
        ["simulate", "--devices", "5", "--budget", "0.5", "--dp-clip", "0.5", "--dp-noise", "1",
         "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["hyper"]["noise"] == 1.0 and out["dp"]["epsilon_fleet"] > 0


def test_the_command_line_takes_the_delta_epsilon_is_reported_for():
    def run(*delta: str) -> dict:
        result = CliRunner().invoke(
            app,
            ["simulate", "--devices", "5", "--budget", "0.5", "--dp-clip", "0.5",
             "--dp-noise", "1", *delta, "--json"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["dp"]

    default, loose = run(), run("--dp-delta", "1e-3")
    assert (default["delta"], loose["delta"]) == (1e-5, 1e-3)
    assert loose["epsilon_fleet"] < default["epsilon_fleet"]  # same run, a weaker claim
    bad = CliRunner().invoke(app, ["simulate", "--dp-delta", "1"])
    assert bad.exit_code != 0 and "--dp-delta must be in (0, 1)" in str(bad.exception)
