"""Model out: the retained global model, its ONNX export, evaluation and history.

Nothing here runs long on the event loop. Building and encoding the model, evaluating
it and writing history run in threads; the ONNX export runs in a process of its own,
because ``import onnx`` and its checker hold the GIL for about half a second, which
would freeze the event loop from any thread.

Each new version's evaluation goes to history.jsonl and to the retained summary on
``fl/{fleet}/aggregator/history`` (``aggregator.history``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import numpy as np

from aggregator.history import History, Recent
from aggregator.intake import Snapshot
from fedmq.chunks import Manifest, split
from fedmq.data import Dataset
from fedmq.errors import ConfigError
from fedmq.model import Arch, Weights, accuracy, loss
from fedmq.preprocess import Standardizer
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import GlobalModel

PARENT_POLL_S = 0.5
log = logging.getLogger("fedmq.aggregator")


@dataclass(frozen=True)
class Evaluation:
    """A version's score; a non-finite one is None, so NaN never reaches the wire or history."""

    version: int
    accuracy: float | None
    loss: float | None
    at: float


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def make_out_dir(path: Path) -> None:
    """The aggregator's own directory (ledger, history, export): private to its user;
    ConfigError ``bad_out_dir`` when it is a file or cannot be created."""
    if path.exists() and not path.is_dir():
        raise ConfigError("bad_out_dir", f"--out-dir {path} is a file, not a directory")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "bad_out_dir", f"--out-dir {path} cannot be created ({exc.strerror or exc})"
        ) from exc


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

    return to_onnx(
        model.arch,
        model.weights,
        model_version=model.version,
        digest=model.digest,
        prep=model.prep,
    )


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
        max_payload: int | None = None,
    ) -> None:
        self.topics, self.arch, self.hyper, self.evalset = topics, arch, hyper, evalset
        self.max_payload = max_payload
        # Chunk topics model/global/{i} that may hold a retained chunk (set from the
        # retained manifest at start): the ones a smaller model no longer uses are cleared.
        self.retained_chunks = 0
        self._onnx_skipped = False
        self.run = run
        self.rollbacks = 0  # announced rollbacks of ``run`` (set by the start check)
        self.export_onnx = export_onnx
        self.onnx_path = out_dir / "model.onnx"
        self.history = History(out_dir / "history.jsonl")
        self.recent = Recent(run, out_dir)
        self.last_eval: Evaluation | None = None
        self.published_version = -1
        self.bytes_out = 0  # payload bytes published (models and ONNX exports)
        self._exporter: ProcessPoolExecutor | None = None
        self._exporter_lock = threading.Lock()

    async def publish_model(
        self, client: aiomqtt.Client, snap: Snapshot, *, export: bool = True
    ) -> GlobalModel:
        """Publish ``snap``'s model retained; evaluate and log a version not seen before."""
        model = await asyncio.to_thread(self._build, snap)
        self.bytes_out += await self._publish_global(client, model)
        if export:
            await self.publish_onnx(client, model)
        if snap.version != self.published_version:
            self.last_eval = await asyncio.to_thread(self._evaluate_and_log, snap)
        self.published_version = snap.version
        return model

    async def _publish_global(self, client: aiomqtt.Client, model: GlobalModel) -> int:
        """The retained model: whole, or in chunks with their manifest last (docs/wire.md
        3.8), so no device assembles a version before all of it is retained. Bytes sent."""
        payload = await asyncio.to_thread(model.encode)
        chunks = (
            [] if self.max_payload is None else split(payload, "global_model", self.max_payload)
        )
        sent = 0
        if chunks:
            encoded = [c.encode() for c in chunks]
            topics = [self.topics.model_chunk(c.index) for c in chunks]
            await asyncio.gather(
                *(
                    client.publish(t, p, qos=1, retain=True)
                    for t, p in zip(topics, encoded, strict=True)
                )
            )
            sent = sum(map(len, encoded))
            payload = Manifest(
                model.run, model.version, chunks[0].digest, len(payload), len(chunks),
                rollbacks=model.rollbacks,
            ).encode()  # fmt: skip
        await client.publish(self.topics.model_global, payload, qos=1, retain=True)
        # Clear what an earlier, larger model left retained (an empty retained payload).
        stale = range(len(chunks), self.retained_chunks)
        await asyncio.gather(
            *(client.publish(self.topics.model_chunk(i), b"", qos=1, retain=True) for i in stale)
        )
        self.retained_chunks = len(chunks)
        return sent + len(payload)

    def _build(self, snap: Snapshot) -> GlobalModel:
        return GlobalModel.build(
            snap.version,
            self.arch,
            snap.weights,
            self.hyper,
            run=self.run,
            created_at=time.time(),
            rollbacks=self.rollbacks,
            prep=snap.prep,
        )

    async def publish_onnx(self, client: aiomqtt.Client, model: GlobalModel) -> None:
        if not self.export_onnx:
            return
        # Starting the process (and submitting) forks: not on the event loop either.
        job = await asyncio.to_thread(self._export_job, model)
        data = await asyncio.wrap_future(job)
        await asyncio.to_thread(self._write_onnx, data)
        if self.max_payload is not None and len(data) > self.max_payload:
            # Raw ONNX bytes have no envelope to chunk in; the broker would drop them.
            if not self._onnx_skipped:
                log.warning(
                    "ONNX export of %d bytes exceeds max_payload %d: written to %s, not "
                    "published on %s", len(data), self.max_payload, self.onnx_path,
                    self.topics.model_onnx,
                )  # fmt: skip
                self._onnx_skipped = True
            return
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
        ev = self._evaluate(snap.version, snap.weights, snap.prep)
        line = {
            "version": snap.version,
            "time": time.time(),
            "accuracy": None if ev is None else ev.accuracy,
            "loss": None if ev is None else ev.loss,
            "updates_applied": snap.accepted,
            "bytes_in": snap.bytes_in,
            "run": self.run,
            "epsilon": snap.epsilon,
        }
        self.history.append(line)
        self.recent.add(line)
        return ev

    async def publish_history(self, client: aiomqtt.Client) -> None:
        """The retained recent history, when a version was added since it was last sent."""
        if not self.recent.changed:
            return
        payload = self.recent.summary(time.time()).encode()
        await client.publish(self.topics.aggregator_history, payload, qos=1, retain=True)
        self.bytes_out += len(payload)

    def _evaluate(
        self, version: int, weights: Weights, prep: Standardizer | None = None
    ) -> Evaluation | None:
        """On the raw held-out rows, through the model's own standardization."""
        if self.evalset is None:
            return None
        x, y = self.evalset.x, self.evalset.y
        if prep is not None:
            x = prep.apply(x)
        with np.errstate(all="ignore"):  # a model past the gate is sane; this is a backstop
            acc = accuracy(self.arch, weights, x, y) if self.arch.is_classifier else None
            value = loss(self.arch, weights, x, y)
        return Evaluation(version, finite(acc), finite(value), time.time())

    def close(self) -> None:
        with self._exporter_lock:
            if self._exporter is not None:
                self._exporter.shutdown(wait=False, cancel_futures=True)
                self._exporter = None
