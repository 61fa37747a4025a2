"""aggregator.metrics: the series exist, move as reported, and a real Prometheus scrapes them."""

from __future__ import annotations

import pytest

from aggregator.metrics import Metrics
from fedmq.errors import ConfigError


def test_series_move_as_the_aggregator_reports() -> None:
    m = Metrics()
    m.accepted(staleness=3, seconds=0.002, nbytes=1000)
    m.rejected("norm_bound", seconds=0.001, nbytes=500)
    m.published(version=7, nbytes=4000)
    m.evaluated(0.93)
    m.device_states({"idle": 2, "offline": 1})
    m.window_stalled()
    s = m.snapshot()
    assert s["fedmq_updates_total{reason=,result=accepted}"] == 1
    assert s["fedmq_updates_total{reason=norm_bound,result=rejected}"] == 1
    assert s["fedmq_model_version"] == 7 and s["fedmq_eval_accuracy"] == 0.93
    assert s["fedmq_bytes_total{direction=in}"] == 1500
    assert s["fedmq_bytes_total{direction=out}"] == 4000
    assert s["fedmq_devices{state=idle}"] == 2 and s["fedmq_devices{state=training}"] == 0
    assert s["fedmq_staleness_count"] == 1 and s["fedmq_intake_seconds_count"] == 2
    assert s["fedmq_chunk_window_stalls_total"] == 1


def test_two_aggregators_in_one_process_keep_their_own_series() -> None:
    a, b = Metrics(), Metrics()
    a.published(version=3, nbytes=1)
    assert b.snapshot()["fedmq_model_version"] == 0


def test_a_taken_port_is_one_config_error() -> None:
    m = Metrics()
    m.serve(0)
    try:
        with pytest.raises(ConfigError) as info:
            Metrics().serve(m.port)
        assert info.value.reason == "bad_metrics_port"
    finally:
        m.close()


def test_a_real_prometheus_scrapes_the_series(prometheus) -> None:
    m = Metrics()
    m.serve(0)
    prom = prometheus(m.port)
    try:
        m.published(version=42, nbytes=10)
        m.accepted(staleness=2, seconds=0.001, nbytes=10)
        got = prom.wait_for("fedmq_model_version == 42")
        assert got and got[0]["value"][1] == "42"
        hist = prom.wait_for("fedmq_staleness_count > 0")
        assert hist and float(hist[0]["value"][1]) == 1
    finally:
        m.close()
