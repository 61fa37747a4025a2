"""The agent's footprint: peak RSS while training, import time, installed size.

    .venv/bin/python -m benchmarks footprint [--quick] [--json] [--repeats 5]

Peak RSS: a real Mosquitto and an in-process aggregator (digits MLP 64-32-10, FedBuff
K 1, no ledger); the agent runs as its own process, started as a user starts it, on a
shard of digits, until the aggregator has applied ``--updates`` of its updates; then
its peak RSS (``VmHWM``) is read, then SIGTERM. Ways of starting it:

- ``fedmq agent`` under the full install (this venv: ``tools.entry``);
- ``fedmq agent`` as it was before it dispatched ahead of typer (``import typer, rich``
  and the whole typer app first; the baseline measured in the same run);
- ``fedmq agent`` from a fresh venv holding only ``pip install '.[agent]'``.

Import time: wall time of ``python -c "import edge_agent.main, edge_agent.agent,
fedmq.data"`` (what ``fedmq agent`` loads before it starts) minus ``python -c pass``,
median of the repeats, in the fresh venv (the headline) and in this one. Both run with
bytecode as an installed service has it: pip compiles it at install, and a warm-up run
writes what is missing. ``PYTHONDONTWRITEBYTECODE`` is dropped from the children's
environment; a sandbox that sets it compiles every module from source on every start
(until 2026-12-03 this benchmark measured that: 0.19 s at load 0 instead of 0.15).
Installed size: that fresh venv's site-packages minus an empty venv's (pip,
setuptools), with numpy apart. ``--quick`` skips the fresh venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from benchmarks.results import command_line, fmt, machine, spread, write_json, write_section
from fedmq.aio import TaskGroup
from fedmq.config import BrokerConfig
from fedmq.data import Dataset, save_npz
from fedmq.model import Arch, init_weights
from fedmq.training import Hyper
from tools.broker import MosquittoBroker

ROOT = Path(__file__).resolve().parents[1]
ARCH = Arch("mlp", (64, 32, 10))
ENTRY = "from tools.entry import main; main()"
BEFORE = "from tools.cli import main; main()"  # what tools.entry did before it dispatched first
IMPORTS = "import edge_agent.main, edge_agent.agent, fedmq.data"
GOAL_RSS_MB = 45.0
GOAL_IMPORT_S = 0.15
GOAL_EXTRA_MB = 5.0


def _shard(work: Path) -> Path:
    from tools.sim.partition import partition
    from tools.sim.tasks import load_task

    task = load_task("digits")
    idx = partition("iid", task.train.y, 10, np.random.default_rng(0))[0]
    path = work / "shard.npz"
    save_npz(path, Dataset(task.train.x[idx], task.train.y[idx]))
    return path


async def _peak_rss(
    broker: MosquittoBroker, argv: list[str], data: Path, work: Path, updates: int, fleet: str
) -> float:
    """MB: the agent's peak resident set while it trains ``updates`` times."""
    cfg = AggregatorConfig(
        broker=BrokerConfig.from_url(broker.url),
        fleet=fleet,
        out_dir=work / fleet,
        ledger=False,
        export_onnx=False,
        publish_interval=0.05,
    )
    agg = Aggregator(cfg, make_strategy("fedbuff", init_weights(ARCH, 0), 0, k=1), ARCH, Hyper())
    stop = asyncio.Event()
    args = ["agent", "--broker", broker.url, "--fleet", fleet, "--device", "fp-0"]
    args += ["--data", str(data), "--state-dir", str(work / fleet / "agent")]
    async with TaskGroup() as tg:
        tg.create_task(agg.run(stop))
        with (work / f"{fleet}.log").open("wb") as log:
            proc = subprocess.Popen([*argv, *args], stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 120
            while agg.counters.accepted < updates:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (work / f"{fleet}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the agent did not train {updates} times: {tail}")
                await asyncio.sleep(0.05)
            peak = _vm_hwm(proc.pid)
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.returncode is None and proc.poll() is None:
                proc.kill()
            stop.set()
    return peak


def _vm_hwm(pid: int) -> float:
    """MB: the process's peak RSS since its exec (wait4's ru_maxrss would include ours:
    Linux carries the high-water mark across fork)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc (Linux only)")


def _import_s(python: str, repeats: int, cwd: Path) -> dict[str, float]:
    """``cwd`` outside the checkout: ``-c`` puts it first on sys.path, and the fresh venv
    must import its installed fedmq, not this tree."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def wall(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([python, "-c", code], check=True, cwd=cwd, env=env)
        return time.perf_counter() - start

    wall(IMPORTS)  # warm the file cache: the figure is the interpreter's work
    times = [wall(IMPORTS) - wall("pass") for _ in range(repeats)]
    return spread(times)


def _agent_venv(work: Path) -> tuple[Path, dict[str, float]]:
    """A fresh venv with only fedmq[agent]; its python and the installed sizes (MB)."""
    empty, venv = work / "empty-venv", work / "agent-venv"
    for path in (empty, venv):
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{ROOT}[agent]"]
    subprocess.run(pip, check=True, capture_output=True)

    def size(root: Path, only: tuple[str, ...] = ()) -> float:
        (site,) = root.glob("lib/python*/site-packages")
        total = 0
        for p in site.rglob("*"):
            top = p.relative_to(site).parts[0].split("-")[0]
            if p.is_file() and not p.is_symlink() and (not only or top in only):
                total += p.stat().st_size
        return total / 2**20

    total = size(venv) - size(empty)
    numpy = size(venv, ("numpy", "numpy.libs"))
    sizes = {"total_mb": round(total, 1), "numpy_mb": round(numpy, 1)}
    sizes["beyond_numpy_mb"] = round(total - numpy, 1)
    return venv / "bin" / "python", sizes


async def _run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = _shard(work)
    ways = {"fedmq agent (full install)": [sys.executable, "-c", ENTRY]}
    ways["before: through the typer app"] = [sys.executable, "-c", BEFORE]
    sizes, python = None, None
    if not args.quick:
        python, sizes = await asyncio.to_thread(_agent_venv, work)
        ways["fedmq agent (fedmq[agent] only)"] = [str(python), "-c", ENTRY]
    rss: dict[str, list[float]] = {name: [] for name in ways}
    async with MosquittoBroker() as broker:
        for r in range(args.repeats):
            for i, (name, argv) in enumerate(ways.items()):
                mb = await _peak_rss(broker, argv, data, work, args.updates, f"fp{r}w{i}")
                rss[name].append(mb)
                print(f"round {r} {name}: {mb:.1f} MB", flush=True)
    return {
        "peak_rss_mb": {name: spread(v) for name, v in rss.items()},
        "import_s": _import_s(str(python or sys.executable), args.repeats, work),
        "import_s_full_install": _import_s(sys.executable, args.repeats, work),
        "installed": sizes,
    }


def _table(r: dict[str, Any]) -> str:
    rows = ["| what | median (min-max) | goal |", "|---|---|---|"]
    for name, s in r["peak_rss_mb"].items():
        goal = "" if name.startswith("before") else f"≤ {GOAL_RSS_MB:g} MB"
        rows.append(f"| peak RSS training, {name} | {fmt(s, 1)} MB | {goal} |")
    where = "fedmq[agent] only" if r["installed"] else "full install"
    rows.append(f"| import time, {where} | {fmt(r['import_s'], 3)} s | ≤ {GOAL_IMPORT_S} s |")
    if r["installed"]:
        rows.append(f"| import time, full install | {fmt(r['import_s_full_install'], 3)} s |  |")
    if r["installed"]:
        i = r["installed"]
        rows.append(
            f"| installed size of fedmq[agent] | {i['total_mb']} MB = numpy {i['numpy_mb']} MB"
            f" + {i['beyond_numpy_mb']} MB | numpy + ≤ {GOAL_EXTRA_MB:g} MB |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one round, 2 updates, no fresh venv")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--updates", type=int, default=20, help="trainings before the RSS is read")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.updates = 1, 2
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fedmq-footprint-") as tmp:
        results = asyncio.run(_run(args, Path(tmp)))
    report = {
        "benchmark": "footprint",
        "command": command_line("footprint", argv or []),
        "started_at": started,
        "machine": machine(),
        "setup": {"repeats": args.repeats, "updates": args.updates, "model": "mlp:64,32,10"},
        "results": results,
    }
    write_json("footprint", report, args.out_dir)
    print(_table(results))
    if args.json:
        print(json.dumps(report, indent=2))
    if not args.quick:
        write_section("footprint", "Agent footprint", report["command"], _table(results), report)
    return report
