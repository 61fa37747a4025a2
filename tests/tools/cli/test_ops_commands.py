"""``fedmq fleet``, ``model``, ``inspect`` and ``aggregator status``, run as a user runs them:
separate processes against a real Mosquitto with an aggregator and agents running."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from fedmq.config import BrokerConfig
from fedmq.data import load_npz, save_csv
from fedmq.errors import DataError
from fedmq.model import init_weights
from fedmq.schema import Schema
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import AggregatorStatus, DeviceStatus, GlobalModel, new_run
from tools.broker.base import free_port
from tools.cli.model import load_rows
from tools.ops.model import onnx_version


async def first(url: str, topic: str, ok: Callable[[bytes], bool], timeout: float) -> bytes:
    """The first message on ``topic`` (retained ones included) that ``ok`` accepts."""

    async def watch() -> bytes:
        async with aiomqtt.Client(**BrokerConfig.from_url(url).client_kwargs()) as c:
            await c.subscribe(topic, qos=1)
            async for message in c.messages:
                payload = bytes(message.payload)
                if payload and ok(payload):
                    return payload
        raise AssertionError("the connection closed")

    return await asyncio.wait_for(watch(), timeout)


def status_where(ok: Callable[[AggregatorStatus], bool]) -> Callable[[bytes], bool]:
    return lambda payload: ok(AggregatorStatus.decode(payload))


@pytest.mark.broker
async def test_the_operator_commands_see_a_running_fleet(
    mosquitto, fleet, daemons, digits_files, tmp_path
):
    fedmq = daemons.run
    shards, evalset = digits_files(3)
    common = ["--broker", mosquitto.url, "--fleet", fleet]
    out_dir = tmp_path / "agg"
    agg = daemons.start(
        "agg", "aggregator", *common, "--model", "mlp:64,32,10", "--strategy", "fedasync",
        "--eval", str(evalset), "--out-dir", str(out_dir), "--status-interval", "0.5",
    )  # fmt: skip
    # dev1 is stopped: a keepalive long enough that the broker keeps its session meanwhile;
    # dev2 is killed: a short one, so its last will comes within seconds.
    for i, keepalive in enumerate((30, 30, 5)):
        daemons.start(
            f"dev{i}", "agent", *common, "--device", f"dev{i}", "--data", str(shards[i]),
            "--state-dir", str(tmp_path / f"state{i}"), "--keepalive", str(keepalive),
        )  # fmt: skip
    t = Topics(fleet)
    try:
        learnt = AggregatorStatus.decode(
            await first(
                mosquitto.url,
                t.aggregator_status,
                status_where(lambda s: (s.last_accuracy or 0) >= 0.5),
                120,
            )
        )
        daemons.procs["dev1"].send_signal(signal.SIGSTOP)
        daemons.procs["dev2"].send_signal(signal.SIGKILL)
        will = first(
            mosquitto.url,
            t.device_status("dev2"),
            lambda p: DeviceStatus.decode(p).state == "offline",
            30,
        )
        ahead = first(
            mosquitto.url,
            t.aggregator_status,
            status_where(lambda s: s.version >= learnt.version + 6),
            30,
        )
        await asyncio.gather(will, ahead)

        listed = fedmq("fleet", "ls", *common, "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {r["device"]: r for r in json.loads(listed.stdout)}
        assert set(rows) == {"dev0", "dev1", "dev2"}
        assert rows["dev2"]["state"] == "offline"
        assert rows["dev1"]["state"] != "offline" and rows["dev1"]["staleness"] >= 6
        assert all(r["accepted"] > 0 for r in rows.values())
        offline = json.loads(fedmq("fleet", "ls", *common, "--json", "--state", "offline").stdout)
        assert [r["device"] for r in offline] == ["dev2"]
        stale = json.loads(fedmq("fleet", "ls", *common, "--json", "--stale-over", "5").stdout)
        assert "dev1" in {r["device"] for r in stale}
        assert all(r["staleness"] > 5 for r in stale)

        table = fedmq("fleet", "ls", *common, "--sort", "staleness")
        assert table.returncode == 0 and "dev1" in table.stdout and "offline" in table.stdout
        (tmp_path / "fleet-ls.txt").write_text(table.stdout)

        shown = fedmq("fleet", "show", "dev1", *common, "--json")
        assert json.loads(shown.stdout)["contributions"]["device"] == "dev1", shown.stderr
        shown = fedmq("fleet", "show", "dev2", *common)
        assert shown.stdout.startswith("dev2: offline, "), shown.stderr
        assert "contributions (the aggregator's ledger)" in shown.stdout
        (tmp_path / "fleet-show.txt").write_text(shown.stdout)

        model = fedmq("model", "show", *common)
        assert model.returncode == 0 and "version" in model.stdout, model.stderr
        (tmp_path / "model-show.txt").write_text(model.stdout)

        # The history over MQTT: the aggregator's retained summary, no disk needed.
        retained = fedmq("model", "history", *common, "--json")
        assert retained.returncode == 0, retained.stderr
        summary = json.loads(retained.stdout)
        assert summary[-1]["version"] >= learnt.version and summary[-1]["accuracy"] >= 0.5
        plotted = fedmq("model", "history", *common, "--plot", str(tmp_path / "history.png"))
        assert plotted.returncode == 0 and "plotted accuracy of" in plotted.stdout, plotted.stderr
        assert (tmp_path / "history.png").read_bytes()[:4] == b"\x89PNG"

        status = json.loads(fedmq("aggregator", "status", *common, "--json").stdout)
        assert status["strategy"] == "fedasync" and status["accepted"] > 0
        assert status["devices"]["offline"] == 1 and sum(status["devices"].values()) == 3
        human = fedmq("aggregator", "status", *common).stdout
        started = datetime.fromtimestamp(status["started_at"], timezone.utc)
        assert f"started_at: {started.isoformat(timespec='seconds')}" in human, human

        inspected = fedmq("inspect", f"fl/{fleet}/devices/+/status", *common[:2], "--count", "3")
        lines = [json.loads(x) for x in inspected.stdout.splitlines()]
        assert len(lines) == 3, inspected.stderr
        assert {x["kind"] for x in lines} == {"device_status"}

        csv = tmp_path / "eval.csv"
        save_csv(csv, load_npz(evalset))
        predicted = fedmq("model", "predict", *common, "--input", str(csv), "--json")
        assert predicted.returncode == 0, predicted.stderr
        pred = json.loads(predicted.stdout)
        assert len(pred["predictions"]) == len(load_npz(evalset).y)
        # The aggregator's own evaluation of that version: its history, complete once it
        # has stopped (an evaluation is logged after the version is published).
        agg.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(agg.wait, 30) == 0, daemons.log("agg")

        # Export what the broker retains now that nothing publishes over it.
        final = GlobalModel.decode(await first(mosquitto.url, t.model_global, bool, 10))
        exports = {}
        for fmt in ("onnx", "npz"):
            path = tmp_path / f"model.{fmt}"
            done = fedmq("model", "export", *common, "--format", fmt, "--out", str(path), "--json")
            assert done.returncode == 0, done.stderr
            exports[fmt] = json.loads(done.stdout)
            assert exports[fmt]["version"] == final.version
            assert exports[fmt]["bytes"] == path.stat().st_size > 0
        assert onnx_version((tmp_path / "model.onnx").read_bytes()) == final.version
        with np.load(tmp_path / "model.npz") as saved:
            assert json.loads(str(saved["__fedmq__"]))["version"] == final.version
            for name, w in final.weights.items():
                np.testing.assert_array_equal(saved[name], w)
    except BaseException:
        print(daemons.logs())
        raise
    history = [json.loads(x) for x in (out_dir / "history.jsonl").read_text().splitlines()]
    own = {h["version"]: h["accuracy"] for h in history}
    # The retained summary says what history.jsonl says, version for version.
    assert all(own[p["version"]] == p["accuracy"] for p in summary), summary
    # float32 inference against the aggregator's float64: a tie may break differently
    assert abs(pred["accuracy"] - own[pred["version"]]) <= 1 / len(pred["predictions"]) + 1e-9


@pytest.mark.parametrize(
    "command",
    [["fleet", "ls"], ["fleet", "show", "d"], ["model", "show"], ["aggregator", "status"],
     ["inspect", "fl/default/devices/+/status"],
     ["model", "export", "--format", "npz", "--out", "x"], ["model", "history"]],
)  # fmt: skip
def test_an_unreachable_broker_is_one_line_within_the_timeout(command, daemons):
    fedmq = daemons.run
    url = f"mqtt://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = fedmq(*command, "--broker", url, "--timeout", "2", timeout=30)
    assert time.monotonic() - start < 15
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot connect to" in proc.stderr and "broker_unreachable" in proc.stderr


@pytest.mark.parametrize(
    "command",
    [["fleet", "ls"], ["fleet", "show"], ["fleet", "watch"], ["model", "show"],
     ["model", "export"], ["model", "predict"], ["model", "history"], ["inspect"],
     ["aggregator", "status"], ["aggregator"]],
)  # fmt: skip
def test_every_operator_help_has_an_example(command, daemons):
    fedmq = daemons.run
    proc = fedmq(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"Example: fedmq {' '.join(command)}" in proc.stdout


def test_model_history_plots_accuracy_against_time_and_version(tmp_path: Path, daemons):
    fedmq = daemons.run
    rows = [
        {"version": v, "time": 1000.0 + v, "accuracy": 0.1 * v, "loss": 1.0 / (v + 1)}
        for v in range(8)
    ]
    (tmp_path / "history.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\nnot json\n")
    proc = fedmq("model", "history", "--out-dir", str(tmp_path), "--plot", str(tmp_path / "h.png"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy of 8 versions" in proc.stdout


@pytest.mark.broker
def test_model_history_over_mqtt_without_an_aggregator_is_one_line(mosquitto, fleet, daemons):
    proc = daemons.run("model", "history", "--broker", mosquitto.url, "--fleet", fleet)
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1, proc.stderr
    assert "retains no history" in proc.stderr and "Traceback" not in proc.stderr


def test_model_history_without_history_is_one_line(tmp_path: Path, daemons):
    fedmq = daemons.run
    proc = fedmq("model", "history", "--out-dir", str(tmp_path))
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1
    assert "no history.jsonl" in proc.stderr


def _model(arch: str) -> GlobalModel:
    from aggregator.main import parse_arch

    a = parse_arch(arch)
    return GlobalModel.build(0, a, init_weights(a, 0), Hyper(), run=new_run(), created_at=1.0)


def test_predict_reads_columns_by_the_schemas_names(tmp_path: Path):
    schema = Schema(("a", "b"), "label", "classification", ("no", "yes"))
    (tmp_path / "l.csv").write_text("b,label,a\n1,yes,2\n3,no,4\n")
    (tmp_path / "u.csv").write_text("b,a\n1,2\n3,4\n")
    x, data = load_rows(tmp_path / "l.csv", _model("mlp:2,4,2"), schema)
    assert x.tolist() == [[2, 1], [4, 3]] and data is not None and data.y.tolist() == [1, 0]
    x, data = load_rows(tmp_path / "u.csv", _model("mlp:2,4,2"), schema)
    assert x.tolist() == [[2, 1], [4, 3]] and data is None


def test_predict_without_a_schema_takes_the_label_as_the_extra_column(tmp_path: Path):
    (tmp_path / "l.csv").write_text("1,2,1\n3,4,0\n")
    (tmp_path / "u.csv").write_text("1,2\n3,4\n")
    (tmp_path / "w.csv").write_text("1,2,3,4\n")
    _, data = load_rows(tmp_path / "l.csv", _model("mlp:2,4,2"))
    assert data is not None and data.y.tolist() == [1, 0]
    x, data = load_rows(tmp_path / "u.csv", _model("mlp:2,4,2"))
    assert x.shape == (2, 2) and data is None
    with pytest.raises(DataError, match="takes 2 features"):
        load_rows(tmp_path / "w.csv", _model("mlp:2,4,2"))


def _status(device: str) -> bytes:
    return DeviceStatus(
        device=device, state="idle", agent_version="0.1.0", model_version=0, samples=10,
        last_seq=0, last_loss=0.5, cpu=0.1, rss=1, at=time.time(),
    ).encode()  # fmt: skip


def _ctrl_c_delivered() -> None:
    """In the child: SIGINT as a terminal delivers it, even when the test runner was
    started in the background (which ignores SIGINT, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    """A command on a pseudo-terminal, as ``fleet watch`` runs for a person."""

    def __init__(self, argv: list[str]) -> None:
        import pty

        self.fd, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_ctrl_c_delivered
        )
        os.close(slave)
        self.seen = b""

    def wait_for(self, needle: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"{needle!r} never shown: {self.seen[-2000:]!r}")
            try:
                self.seen += os.read(self.fd, 65536)
            except OSError as exc:  # EIO: the process closed the terminal
                raise AssertionError(f"{needle!r} never shown: {self.seen[-2000:]!r}") from exc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.fd)


@pytest.mark.broker
async def test_fleet_watch_redraws_on_every_message_until_ctrl_c(mosquitto, fleet, daemons):
    t = Topics(fleet)
    async with aiomqtt.Client(**BrokerConfig.from_url(mosquitto.url).client_kwargs()) as c:
        await c.publish(t.device_status("w1"), _status("w1"), qos=1, retain=True)
        term = Terminal(
            [*daemons.argv, "fleet", "watch", "--broker", mosquitto.url, "--fleet", fleet]
        )
        try:
            await asyncio.to_thread(term.wait_for, b"1 devices", 30)
            await c.publish(t.device_status("w2"), _status("w2"), qos=1, retain=True)
            await asyncio.to_thread(term.wait_for, b"2 devices", 30)
            term.proc.send_signal(signal.SIGINT)
            assert await asyncio.to_thread(term.proc.wait, 15) == 0
        finally:
            term.close()
    assert b"Traceback" not in term.seen


@pytest.mark.broker
async def test_fleet_watch_json_prints_the_ls_rows_on_every_change(mosquitto, fleet, daemons):
    t = Topics(fleet)
    argv = [*daemons.argv, "fleet", "watch", "--broker", mosquitto.url, "--fleet", fleet, "--json"]
    async with aiomqtt.Client(**BrokerConfig.from_url(mosquitto.url).client_kwargs()) as c:
        await c.publish(t.device_status("w1"), _status("w1"), qos=1, retain=True)
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        pipes["preexec_fn"] = _ctrl_c_delivered
        with subprocess.Popen(argv, **pipes) as proc:
            try:
                first_rows = json.loads(await asyncio.to_thread(proc.stdout.readline))
                assert [r["device"] for r in first_rows] == ["w1"]
                await c.publish(t.device_status("w2"), _status("w2"), qos=1, retain=True)
                while True:  # one line a message: the next that knows w2
                    rows = json.loads(await asyncio.to_thread(proc.stdout.readline))
                    if len(rows) == 2:
                        break
                assert [r["device"] for r in rows] == ["w1", "w2"]
                assert set(rows[0]) == set(first_rows[0])  # the keys of `fleet ls --json`
                proc.send_signal(signal.SIGINT)
                assert await asyncio.to_thread(proc.wait, 15) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert "Traceback" not in proc.stderr.read()


@pytest.mark.broker
def test_model_show_and_export_read_a_model_retained_in_chunks(
    mosquitto_128k, fleet, daemons, tmp_path: Path
):
    """Under a 128 KiB payload limit the retained model is a manifest and its chunks."""
    from fedmq.chunks import Manifest, split
    from fedmq.model import Arch

    topics, arch = Topics(fleet), Arch("mlp", (16, 512, 512, 3))  # 1.09 MB of float32
    model = GlobalModel.build(3, arch, init_weights(arch, 0), Hyper(), run=new_run())
    payload = model.encode()
    chunks = split(payload, "global_model", 131072)
    manifest = Manifest(model.run, model.version, chunks[0].digest, len(payload), len(chunks))

    async def publish() -> None:
        async with aiomqtt.Client(**BrokerConfig.from_url(mosquitto_128k.url).client_kwargs()) as c:
            for chunk in chunks:
                await c.publish(topics.model_chunk(chunk.index), chunk.encode(), qos=1, retain=True)
            await c.publish(topics.model_global, manifest.encode(), qos=1, retain=True)

    asyncio.run(publish())
    common = ["--broker", mosquitto_128k.url, "--fleet", fleet]
    shown = daemons.run("model", "show", *common, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["version"] == 3 and doc["digest"] == model.digest
    assert doc["params"] == sum(w.size for w in model.weights.values())
    out = tmp_path / "model.npz"
    exported = daemons.run("model", "export", *common, "--format", "npz", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["w1"], model.weights["w1"])
