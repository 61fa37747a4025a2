"""Model out: the retained global model, its ONNX export, evaluation and history.jsonl.

Nothing here runs long on the event loop. Building and encoding the model, evaluating
it and writing history run in threads; the ONNX export runs in a process of its own,
because ``import onnx`` and its checker hold the GIL for about half a second, which
would freeze the event loop from any thread.

history.jsonl keeps one line per published version (the publisher publishes at most
one version per ``publish_interval``) and is bounded by rotation: past
``HISTORY_MAX_BYTES`` it moves to history.jsonl.1 (then .2, up to ``HISTORY_KEEP``).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from aggregator.intake import Snapshot
from fedmq.data import Dataset
from fedmq.model import Arch, Weights, accuracy, loss
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import GlobalModel

HISTORY_MAX_BYTES = 8 * 1024 * 1024
HISTORY_KEEP = 3
PARENT_POLL_S = 0.5


@dataclass(frozen=True)
class Evaluation:
    version: int
    accuracy: float | None
    loss: float
    at: float


def make_out_dir(path: Path) -> None:
    """The aggregator's own directory (ledger, history, export): private to its user."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


class History:
    """Append-only JSON lines, fsynced, rotated by size."""

    def __init__(self, path: Path, max_bytes: int = HISTORY_MAX_BYTES, keep: int = HISTORY_KEEP):
        self.path, self.max_bytes, self.keep = path, max_bytes, keep

    def append(self, line: dict) -> None:
        if self.path.exists() and self.path.stat().st_size >= self.max_bytes:
            self._rotate()
        with self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


def _follow_parent(parent: int) -> None:
    """In the export process: exit when the aggregator is gone, even by kill -9.

    Its task queue never reports the parent's death (the child holds both ends of
    the pipe), so the child watches its parent id instead.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="fedmq-follow-parent", daemon=True).start()


def _onnx_bytes(model: GlobalModel) -> bytes:
    """In the export process: the model as ONNX bytes."""
    from fedmq.onnx_export import to_onnx

    return to_onnx(model.arch, model.weights, model_version=model.version, digest=model.digest)


class Publisher:
    def __init__(
        self,
        topics: Topics,
        arch: Arch,
        hyper: Hyper,
        out_dir: Path,
        *,
        run: str,
        evalset: Dataset | None = None,
        export_onnx: bool = True,
    ) -> None:
        self.topics, self.arch, self.hyper, self.evalset = topics, arch, hyper, evalset
        self.run = run
        self.export_onnx = export_onnx
        self.onnx_path = out_dir / "model.onnx"
        self.history = History(out_dir / "history.jsonl")
        self.last_eval: Evaluation | None = None
        self.published_version = -1
        self.bytes_out = 0  # payload bytes published (models and ONNX exports)
        self._exporter: ProcessPoolExecutor | None = None
        self._exporter_lock = threading.Lock()

    async def publish_model(
        self, client: aiomqtt.Client, snap: Snapshot, *, export: bool = True
    ) -> GlobalModel:
        """Publish ``snap``'s model retained; evaluate and log a version not seen before."""
        model = await asyncio.to_thread(self._build, snap.version, snap.weights)
        payload = model.encode()
        await client.publish(self.topics.model_global, payload, qos=1, retain=True)
        self.bytes_out += len(payload)
        if export:
            await self.publish_onnx(client, model)
        if snap.version != self.published_version:
            self.last_eval = await asyncio.to_thread(self._evaluate_and_log, snap)
        self.published_version = snap.version
        return model

    def _build(self, version: int, weights: Weights) -> GlobalModel:
        return GlobalModel.build(
            version, self.arch, weights, self.hyper, run=self.run, created_at=time.time()
        )

    async def publish_onnx(self, client: aiomqtt.Client, model: GlobalModel) -> None:
        if not self.export_onnx:
            return
        # Starting the process (and submitting) forks: not on the event loop either.
        job = await asyncio.to_thread(self._export_job, model)
        data = await asyncio.wrap_future(job)
        await asyncio.to_thread(self._write_onnx, data)
        await client.publish(self.topics.model_onnx, data, qos=1, retain=True)
        self.bytes_out += len(data)

    def _export_job(self, model: GlobalModel) -> Future[bytes]:
        with self._exporter_lock:  # two exports can start together: one process
            if self._exporter is None:
                spawn = multiprocessing.get_context("spawn")  # no fork of a threaded process
                self._exporter = ProcessPoolExecutor(
                    1, mp_context=spawn, initializer=_follow_parent, initargs=(os.getpid(),)
                )
            return self._exporter.submit(_onnx_bytes, model)

    def _write_onnx(self, data: bytes) -> None:
        from fedmq.onnx_export import write_onnx

        write_onnx(self.onnx_path, data)

    def _evaluate_and_log(self, snap: Snapshot) -> Evaluation | None:
        ev = self._evaluate(snap.version, snap.weights)
        self.history.append(
            {
                "version": snap.version,
                "time": time.time(),
                "accuracy": None if ev is None else ev.accuracy,
                "loss": None if ev is None else ev.loss,
                "updates_applied": snap.accepted,
                "bytes_in": snap.bytes_in,
                "epsilon": snap.epsilon,
            }
        )
        return ev

    def _evaluate(self, version: int, weights: Weights) -> Evaluation | None:
        if self.evalset is None:
            return None
        x, y = self.evalset.x, self.evalset.y
        acc = accuracy(self.arch, weights, x, y) if self.arch.is_classifier else None
        return Evaluation(version, acc, loss(self.arch, weights, x, y), time.time())

    def close(self) -> None:
        with self._exporter_lock:
            if self._exporter is not None:
                self._exporter.shutdown(wait=False, cancel_futures=True)
                self._exporter = None
