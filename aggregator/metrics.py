"""Prometheus metrics for the aggregator (``--metrics-port``), with prometheus-client.

Each aggregator has a registry of its own (no global state: tests and one-process demos
may run several). The intake thread updates counters and histograms, which
prometheus-client makes thread-safe; the HTTP server runs in a daemon thread of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedmq.errors import ConfigError

STATES = ("online", "training", "idle", "error", "offline")
# Staleness in versions: FedAsync rejects past max_staleness (64 by default).
STALENESS_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128)
INTAKE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The aggregator's series; ``serve(port)`` exposes them on ``/metrics``."""

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:  # the aggregator extra brings it
            raise ConfigError(
                "missing_dependency",
                "--metrics-port needs prometheus-client: pip install 'fedmq[aggregator]'",
            ) from exc
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.updates = prom.Counter(
            "fedmq_updates",
            "Updates decided on, by result and reason.",
            ["result", "reason"],
            registry=r,
        )
        self.version = prom.Gauge("fedmq_model_version", "Current global version.", registry=r)
        self.accuracy = prom.Gauge(
            "fedmq_eval_accuracy", "Accuracy of the last evaluated version.", registry=r
        )
        self.staleness = prom.Histogram(
            "fedmq_staleness",
            "Staleness of applied updates (versions).",
            buckets=STALENESS_BUCKETS,
            registry=r,
        )
        self.devices = prom.Gauge(
            "fedmq_devices",
            "Devices by state, from their retained statuses.",
            ["state"],
            registry=r,
        )
        self.bytes = prom.Counter(
            "fedmq_bytes",
            "Payload bytes, in (updates) and out (models).",
            ["direction"],
            registry=r,
        )
        self.intake_seconds = prom.Histogram(
            "fedmq_intake_seconds",
            "Time to decide on and commit one update.",
            buckets=INTAKE_BUCKETS,
            registry=r,
        )
        self.window_stalls = prom.Counter(
            "fedmq_chunk_window_stalls",
            "Times the broker stopped delivering while chunks of partial updates were held "
            "unacknowledged (its in-flight window is too small; aggregator.stall).",
            registry=r,
        )
        for state in STATES:
            self.devices.labels(state).set(0)
        for direction in ("in", "out"):
            self.bytes.labels(direction)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread (0 picks a free port)."""
        try:
            self.server, self.thread = self._prom.start_http_server(
                port, addr=addr, registry=self.registry
            )
        except OSError as exc:
            raise ConfigError(
                "bad_metrics_port", f"cannot serve metrics on {addr}:{port}: {exc.strerror}"
            ) from exc

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.shutdown()
            server.server_close()

    # -- what the aggregator reports --------------------------------------------------

    def accepted(self, staleness: int, seconds: float, nbytes: int) -> None:
        self.updates.labels("accepted", "").inc()
        self.staleness.observe(staleness)
        self.intake_seconds.observe(seconds)
        self.bytes.labels("in").inc(nbytes)

    def rejected(self, reason: str, seconds: float, nbytes: int) -> None:
        self.updates.labels("rejected", reason).inc()
        self.intake_seconds.observe(seconds)
        self.bytes.labels("in").inc(nbytes)

    def published(self, version: int, nbytes: int) -> None:
        self.version.set(version)
        self.bytes.labels("out").inc(nbytes)

    def evaluated(self, accuracy: float | None) -> None:
        if accuracy is not None:
            self.accuracy.set(accuracy)

    def window_stalled(self) -> None:
        self.window_stalls.inc()

    def device_states(self, counts: Mapping[str, int]) -> None:
        for state in STATES:
            self.devices.labels(state).set(counts.get(state, 0))

    def snapshot(self) -> dict[str, Any]:
        """Every sample as ``{name{labels}: value}``, for tests and ``aggregator status``."""
        out: dict[str, Any] = {}
        for family in self.registry.collect():
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out
