"""A real Prometheus scraping a running ``fedmq aggregator --metrics-port`` with agents."""

from __future__ import annotations

import pytest

from tools.broker.base import free_port


@pytest.mark.broker
def test_prometheus_scrapes_a_running_aggregator(
    mosquitto, fleet, daemons, digits_files, prometheus, tmp_path
):
    shards, evalset = digits_files(2)
    common = ["--broker", mosquitto.url, "--fleet", fleet]
    port = free_port()
    daemons.start(
        "agg", "aggregator", *common, "--model", "mlp:64,32,10", "--strategy", "fedasync",
        "--eval", str(evalset), "--out-dir", str(tmp_path / "agg"),
        "--metrics-port", str(port),
    )  # fmt: skip
    for i, shard in enumerate(shards):
        daemons.start(
            f"dev{i}", "agent", *common, "--device", f"dev{i}", "--data", str(shard),
            "--state-dir", str(tmp_path / f"state{i}"),
        )  # fmt: skip
    prom = prometheus(port)
    try:
        version = prom.wait_for("fedmq_model_version >= 3", timeout=90)
        assert version, prom.query("up")
        accepted = prom.wait_for('fedmq_updates_total{result="accepted"} >= 3')
        assert accepted and float(accepted[0]["value"][1]) >= 3
        assert prom.wait_for("fedmq_eval_accuracy > 0")
        assert prom.wait_for('fedmq_bytes_total{direction="out"} > 0')
        assert prom.wait_for("fedmq_intake_seconds_count >= 3")
        assert prom.wait_for("fedmq_staleness_count >= 3")
        devices = prom.wait_for("sum(fedmq_devices) == 2")
        assert devices, prom.query("fedmq_devices")
    except BaseException:
        print(daemons.logs())
        raise
