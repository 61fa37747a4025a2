"""Fixtures for aggregator tests: a real Prometheus server scraping one target."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.broker import LOOPBACK, accepting
from tools.broker.base import free_port


class Prometheus:
    def __init__(self, target_port: int, workdir: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            message = "prometheus is not installed (apt-get install prometheus)"
            if os.environ.get("FEDMQ_REQUIRE_PROMETHEUS"):
                pytest.fail(message)
            pytest.skip(message)
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 500ms, evaluation_interval: 500ms}\n"
            "scrape_configs:\n"
            "  - job_name: fedmq\n"
            f"    static_configs: [{{targets: ['{LOOPBACK}:{target_port}']}}]\n"
        )
        self.port = free_port()
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{self.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.log.read_text(errors="replace")
                self.close()
                pytest.fail(f"prometheus did not start: {err[-2000:]}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        """Listening is not enough: the API answers 503 until the storage is open."""
        if not accepting(self.port):
            return False
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/-/ready", timeout=2):
                return True
        except OSError:  # urllib's HTTPError and URLError are OSErrors
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://{LOOPBACK}:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` has a result (Prometheus scrapes on its own clock)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.25)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    """Start a Prometheus scraping ``127.0.0.1:port``; stopped after the test."""
    started: list[Prometheus] = []

    def start(port: int) -> Prometheus:
        started.append(Prometheus(port, tmp_path / f"prom{len(started)}"))
        return started[-1]

    yield start
    for p in started:
        p.close()
