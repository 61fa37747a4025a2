"""Scale on one box: N devices, each its own MQTT connection, against `fedmq aggregator`.

    .venv/bin/python -m benchmarks scale [--quick] [--json] [--devices 50,500,1000]
        [--modes before,hold,after] [--seconds 60] [--workers 4]

For each fleet size and mode: a fresh Mosquitto (the packaged dev.conf), the real
``fedmq aggregator`` process (FedBuff, defences and ledger on, ONNX export off so its
CPU is the intake's, ``--eval`` on the digits test split) and ``--workers`` processes of
``benchmarks.scale_worker``, each hosting its share of the devices as real edge agents
(``edge_agent.agent.Agent``), every one with its own connection. ``after`` is the agent
as shipped (pull on ready, probing for the retained model between runs); ``hold``
the same without the probe (it holds the subscription until the model is read);
``before`` the same agent subscribed to the model for its whole session, as before
issue 12; all run in the same invocation on the same draws.
Once every agent is connected, a window of ``--seconds`` measures updates per second,
the aggregator's CPU (of one core) and RSS, and Mosquitto's RSS, sampled each second.
Model downloads per applied update are every model payload the agents received over
the whole run divided by the updates the aggregator applied (and, beside it, by the
updates sent and by the runs started: the runs still going at the end downloaded their
model but sent nothing); staleness is that of the
updates applied in the window (from the ledger); accuracy is the last evaluated version.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.results import command_line, machine, write_json, write_section
from benchmarks.scale_probe import ProcSampler, applied_staleness, metric
from fedmq.data import save_npz
from tools.broker import MosquittoBroker
from tools.broker.base import free_port
from tools.sim.tasks import load_task

READY_TIMEOUT = 120.0  # seconds for every worker's agents to connect


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10 devices, 5 s: a smoke run")
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--devices", default="50,500,1000", help="fleet sizes, comma-separated")
    p.add_argument("--modes", default="before,hold,after")
    p.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    p.add_argument("--workers", type=int, default=4, help="processes hosting the devices")
    p.add_argument("--delays", default="lognormal:2.0,0.5", help="per-device compute time")
    p.add_argument("--partition", default="iid")
    p.add_argument("--strategy", default="fedbuff")
    p.add_argument("--seed", type=int, default=0)
    return p


def _raise_fd_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard one: Mosquitto (a child) needs one per client."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def _wait_metrics(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the aggregator exited at start")
        try:
            _scrape(port)
            return
        except OSError:
            time.sleep(0.1)  # the daemon is starting; nothing to await across processes
    raise RuntimeError("the aggregator's /metrics never answered")


def _aggregator(url: str, fleet: str, work: Path, port: int, args: argparse.Namespace) -> Any:
    task = load_task("digits", seed=args.seed)
    save_npz(work / "test.npz", task.test)
    h = task.hyper
    argv = [
        *(str(Path(sys.executable).parent / "fedmq"), "aggregator", "--broker", url),
        *("--fleet", fleet),
        *("--model", "mlp:64,32,10", "--eval", str(work / "test.npz")),
        *("--out-dir", str(work / "aggregator"), "--metrics-port", str(port)),
        *("--strategy", args.strategy, "--no-standardize", "--no-export-onnx"),
        *("--lr", str(h.lr), "--epochs", str(h.epochs), "--batch", str(h.batch)),
        *("--seed", str(args.seed), "--log-level", "warning"),
    ]
    log = open(work / "aggregator.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log


def _workers(url: str, fleet: str, n: int, mode: str, work: Path, args: argparse.Namespace):
    procs = []
    w = max(1, min(args.workers, n))
    bounds = [round(i * n / w) for i in range(w + 1)]
    for i in range(w):
        argv = [
            *(sys.executable, "-m", "benchmarks.scale_worker", "--broker", url),
            *("--fleet", fleet, "--devices", str(n), "--first", str(bounds[i])),
            *("--count", str(bounds[i + 1] - bounds[i]), "--mode", mode),
            *("--partition", args.partition, "--delays", args.delays, "--seed", str(args.seed)),
            *("--state-dir", str(work / "agents"), "--out", str(work / f"worker{i}.json")),
        ]
        err = open(work / f"worker{i}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append((subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err), err))
    for proc, _ in procs:  # each prints "ready" once all of its agents are connected
        line = proc.stdout.readline() if proc.stdout else b""
        if line.strip() != b"ready":
            raise RuntimeError(f"a worker did not get ready; see {work}/worker*.log")
    return procs


def run_one(n: int, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    fleet = f"scale-{mode}-{n}"
    with tempfile.TemporaryDirectory(prefix="fedmq-scale-") as tmp, MosquittoBroker() as broker:
        work = Path(tmp)
        port = free_port()
        agg, agg_log = _aggregator(broker.url, fleet, work, port, args)
        try:
            _wait_metrics(port, agg)
            mosq = ProcSampler(broker.pid)
            mosq_idle = mosq.rss()
            workers = _workers(broker.url, fleet, n, mode, work, args)
            try:
                aggp = ProcSampler(agg.pid)
                before = _scrape(port)
                t0 = time.time()
                aggp.start(), mosq.start()
                while time.time() - t0 < args.seconds:
                    time.sleep(1.0)  # the sampling period
                    aggp.sample(), mosq.sample()
                t1 = time.time()
                after = _scrape(port)
            finally:
                for proc, _ in workers:
                    proc.send_signal(signal.SIGTERM)
                for proc, err in workers:
                    proc.wait(timeout=120)
                    err.close()
            reports = [
                json.loads((work / f"worker{i}.json").read_text()) for i in range(len(workers))
            ]
            time.sleep(1.0)  # let the aggregator fold the last updates the workers sent
            final = _scrape(port)
        finally:
            agg.send_signal(signal.SIGTERM)
            agg.wait(timeout=60)
            agg_log.close()
        stale = applied_staleness(work / "aggregator" / "ledger.sqlite", t0, t1)
        probes = (aggp, mosq, mosq_idle, stale)
        return _row(n, mode, t1 - t0, (before, after, final), reports, probes)


def _row(
    n: int,
    mode: str,
    window: float,
    scrapes: tuple[str, str, str],
    reports: list[dict[str, Any]],
    probes: tuple[ProcSampler, ProcSampler, int, dict[str, float]],
) -> dict[str, Any]:
    before, after, final = scrapes
    aggp, mosq, mosq_idle, stale = probes
    accepted = metric(final, "fedmq_updates_total", result="accepted")
    by_reason = {
        r: int(metric(final, "fedmq_updates_total", result="rejected", reason=r))
        for r in sorted(_reasons(final))
    }
    rejected = sum(by_reason.values())
    in_window = metric(after, "fedmq_updates_total", result="accepted") - metric(
        before, "fedmq_updates_total", result="accepted"
    )
    downloads = sum(r["model_downloads"] for r in reports)
    sent = sum(r["updates_sent"] for r in reports)
    runs = sum(r["runs"] for r in reports)
    agent_rss = sum(r["rss_bytes"] - r["rss_base_bytes"] for r in reports)
    return {
        "devices": n,
        "mode": mode,
        "workers": len(reports),
        "window_s": round(window, 1),
        "updates_applied": int(accepted),
        "updates_rejected": int(rejected),
        "rejected_by_reason": {r: n for r, n in by_reason.items() if n},
        "updates_sent": sent,
        "model_downloads": downloads,
        "downloads_per_applied_update": round(downloads / max(accepted, 1), 3),
        "downloads_per_update_sent": round(downloads / max(sent, 1), 3),
        # The runs still going when the window closed downloaded their model but sent
        # nothing yet: per run started is the pull's own figure, without that end effect.
        "runs": runs,
        "downloads_per_run": round(downloads / max(runs, 1), 3),
        "updates_per_s": round(in_window / window, 1),
        "versions": int(metric(final, "fedmq_model_version")),
        "final_accuracy": round(metric(final, "fedmq_eval_accuracy"), 4),
        "staleness": stale,
        "aggregator_cpu_pct": aggp.cpu_percent(),
        "aggregator_rss_mb": aggp.peak_rss_mb(),
        "mosquitto_rss_mb": mosq.peak_rss_mb(),
        "mosquitto_cpu_pct": mosq.cpu_percent(),
        "mosquitto_rss_per_100_devices_mb": round(
            (mosq.peak_rss() - mosq_idle) / 2**20 / n * 100, 2
        ),
        "agent_rss_per_100_devices_mb": round(agent_rss / 2**20 / n * 100, 2),
        "worker_rss_mb": [round(r["rss_bytes"] / 2**20, 1) for r in reports],
        "bytes_down_per_applied_update": round(
            sum(r["bytes_down"] for r in reports) / max(accepted, 1)
        ),
        "reconnects": sum(r["connects"] for r in reports) - n,
    }


def _why(run: dict[str, Any]) -> str:
    reasons = run.get("rejected_by_reason") or {}
    return "".join(f"; {r} {n:,}" for r, n in reasons.items())


def _reasons(text: str) -> set[str]:
    out = set()
    for line in text.splitlines():
        if line.startswith("fedmq_updates_total{") and 'result="rejected"' in line:
            out.add(line.split('reason="', 1)[1].split('"', 1)[0])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.quick:
        args.devices, args.seconds, args.workers, args.delays = "10", 4.0, 2, "lognormal:0.3,0.5"
    sizes = [int(s) for s in args.devices.split(",")]
    modes = args.modes.split(",")
    limits = _raise_fd_limit()
    report: dict[str, Any] = {
        "benchmark": "scale",
        "command": command_line("scale", argv),
        "started_at": time.time(),
        "machine": machine(),
        "setup": {
            "task": "digits",
            "partition": args.partition,
            "delays": args.delays,
            "strategy": args.strategy,
            "seed": args.seed,
            "workers": args.workers,
            "window_s": args.seconds,
            "nofile_limit": list(limits),
            "mosquitto_max_connections": "-1 (the default: unlimited; RLIMIT_NOFILE binds)",
        },
        "runs": [],
    }
    for n in sizes:
        for mode in modes:
            print(f"scale: {n} devices, {mode} ...", file=sys.stderr, flush=True)
            row = run_one(n, mode, args)
            print(json.dumps(row), file=sys.stderr, flush=True)
            report["runs"].append(row)
    write_json("scale", report, args.out_dir)
    if not args.quick:
        write_section("scale", TITLE, report["command"], table(report), report)
    return report


TITLE = "Scale on one box: devices per process, pull on ready (issue 12, items 4 and 7)"


def table(r: dict[str, Any]) -> str:
    s = r["setup"]
    head = (
        f"Digits split {s['partition']}, compute delays {s['delays']} per device (seed "
        f"{s['seed']}), {s['strategy']} (K 10, defences and ledger on, ONNX export off), "
        f"{s['workers']} worker processes hosting the devices, {s['window_s']:g} s measured "
        f"window after every agent connected. RLIMIT_NOFILE {s['nofile_limit'][0]}; "
        "Mosquitto's max_connections left at its default (-1, unlimited). `before`: agents "
        "subscribed to the model for the whole session (every published version); `hold`: "
        "pull on ready, holding the subscription from a run's end until the model is read; "
        "`after`: pull on ready with the probe (SUBSCRIBE and UNSUBSCRIBE back to back). "
        "CPU is % of one core over the window; RSS the peak sampled.\n\n"
        "| devices | mode | downloads / applied update | per update sent | per run "
        "| updates/s | staleness mean / p90 "
        "| final acc. | aggregator CPU / RSS | Mosquitto RSS | Mosquitto MB / 100 dev. "
        "| agents MB / 100 dev. | applied (rejected, by reason) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for x in r["runs"]:
        st = x["staleness"]
        lines.append(
            f"| {x['devices']:,} | {x['mode']} | **{x['downloads_per_applied_update']:.3f}** | "
            f"{x['downloads_per_update_sent']:.3f} | {x['downloads_per_run']:.3f} | "
            f"{x['updates_per_s']:.1f} | {st['mean']:.2f} / {st['p90']:g} | "
            f"{x['final_accuracy']:.4f} | {x['aggregator_cpu_pct']:.0f} % / "
            f"{x['aggregator_rss_mb']:.0f} MB | {x['mosquitto_rss_mb']:.1f} MB | "
            f"{x['mosquitto_rss_per_100_devices_mb']:.2f} | "
            f"{x['agent_rss_per_100_devices_mb']:.1f} | "
            f"{x['updates_applied']:,} ({x['updates_rejected']:,}{_why(x)}) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
