"""The start check: does the ledger agree with the model the fleet already holds?

The broker retains the last global model the aggregator published, so at start it
tells what the devices hold. A ledger behind it (restored from a backup; its ``-wal``
file deleted after a kill -9, losing acknowledged updates), a fresh one (a new or 0-byte
file) while a model is retained, or a ledger of another run would otherwise start
serving quietly: devices ignore a lower version of their run and stall, or a new
federation at v0 overwrites the retained model. ``decide`` refuses such a start with
one line (a ``ConfigError``, exit status 2) unless the operator chose a resolution:

- ``--accept-rollback``: continue from the ledger and announce a rollback (``rollbacks``
  + 1 in the same run), which devices follow although the version is lower;
- ``--new-run``: continue from the ledger under a fresh run id, a new federation.

Neither flag changes a start without a conflict. ``decide`` is pure: what the ledger
holds and what the broker retains in, the run to serve (or the refusal) out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt

from aggregator.ledger_schema import RunRecord
from fedmq.chunks import Manifest, is_manifest
from fedmq.errors import ConfigError, WireError
from fedmq.retained import collect_retained, forget
from fedmq.wire import GlobalModel
from fedmq.wire import new_run as fresh_run

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig
    from aggregator.ledger import Ledger

log = logging.getLogger("fedmq.aggregator")
START_TIMEOUT = 10.0  # seconds for each SUBSCRIBE of the start check


@dataclass(frozen=True)
class Held:
    """What the ledger holds after its replay."""

    path: Path
    record: RunRecord
    version: int
    origin: str | None = None  # new | empty (0 bytes): no start check accepted it yet
    wal_lost: bool = False  # its writer died and its -wal file is gone (``Ledger``)


@dataclass(frozen=True)
class Seen:
    """The model the broker retains: what the devices hold."""

    run: str
    version: int
    rollbacks: int = 0
    chunks: int = 0  # retained chunk topics of a chunked model (its manifest's count)

    @classmethod
    def of(cls, payload: bytes | None) -> Seen | None:
        """The retained model's identity, whole or as a chunked model's manifest; None
        when there is none (or it is undecodable, and the next publish replaces it)."""
        if not payload:
            return None
        try:
            if is_manifest(payload):
                m = Manifest.decode(payload)
                return cls(m.run, m.version, m.rollbacks, m.count)
            model = GlobalModel.decode(payload)
        except WireError as exc:
            log.warning("ignoring the retained global model: %s", exc)
            return None
        return cls(model.run, model.version, model.rollbacks)


@dataclass(frozen=True)
class Start:
    record: RunRecord  # the run to serve, to be saved in the ledger before publishing
    note: str | None = None  # what the resolution did, for the log


HOW = "pass --accept-rollback to continue from the ledger (devices follow), or --new-run"


def decide(
    held: Held,
    seen: Seen | None,
    *,
    accept: bool = False,
    new: bool = False,
    make_run: Callable[[], str] = fresh_run,
) -> Start:
    """The run to start with, or a ConfigError naming the conflict and its resolutions."""
    record = held.record
    conflict = _conflict(held, seen)
    if conflict is None:
        run = record.run or (seen.run if seen is not None else make_run())
        return Start(RunRecord(run, record.rollbacks, record.replaces))
    reason, message = conflict
    if new:
        run = make_run()
        replaces = None if seen is None else seen.run
        return Start(RunRecord(run, 0, replaces), f"{message}; new run {run} (--new-run)")
    if accept:
        if reason == "wal_lost":  # not behind what devices hold: nothing to announce
            run = record.run or (seen.run if seen is not None else make_run())
            note = f"{message}; continuing from it (--accept-rollback)"
            return Start(RunRecord(run, record.rollbacks, record.replaces), note)
        if reason == "run_mismatch":  # devices follow another run anyway
            return Start(RunRecord(record.run, record.rollbacks), f"{message}; kept its run")
        assert seen is not None  # every other conflict is with the retained model
        rollbacks = max(record.rollbacks, seen.rollbacks) + 1
        note = f"{message}; rollback {rollbacks} of run {seen.run} announced (--accept-rollback)"
        return Start(RunRecord(seen.run, rollbacks), note)
    raise ConfigError(reason, f"{message}: {HOW}")


async def read_retained_model(
    client: aiomqtt.Client, topic: str
) -> tuple[Seen | None, list[aiomqtt.Message]]:
    """What the fleet holds, read on the aggregator's own session before it publishes,
    and the updates that arrived meanwhile (not acknowledged: for the caller to handle)."""
    found, stash = await collect_retained(client, [topic], timeout=START_TIMEOUT)
    await forget(client, [topic], timeout=START_TIMEOUT)
    return Seen.of(found.get(topic)), stash


def _conflict(held: Held, seen: Seen | None) -> tuple[str, str] | None:
    """(reason, message) when the ledger cannot simply continue what the devices hold."""
    lost = (
        "wal_lost",
        f"ledger {held.path} was left open by an aggregator that died and its -wal file is"
        " gone, or a power cut lost its newest payloads: the updates it acknowledged since"
        " its last checkpoint are lost",
    )
    if seen is None:  # nothing retained: nothing to disagree with but the ledger itself
        return lost if held.wal_lost else None
    retained = f"the broker retains model v{seen.version} of run {seen.run}"
    if held.origin is not None:
        what = "empty (0 bytes)" if held.origin == "empty" else "new"
        return "ledger_empty", f"ledger {held.path} is {what} but {retained}"
    run = held.record.run or seen.run  # a ledger from before run ids adopts the fleet's
    if run != seen.run:
        if held.record.replaces == seen.run:
            return None  # a --new-run start whose first model is not out yet
        return "run_mismatch", f"ledger {held.path} is of run {run} but {retained}"
    if (held.record.rollbacks, held.version) >= (seen.rollbacks, seen.version):
        return lost if held.wal_lost else None
    why = (
        "its -wal file was lost after a crash, or its newest payloads with a power cut"
        if held.wal_lost
        else "restored from a backup, or its -wal file lost after a crash?"
    )
    return "ledger_behind", (
        f"ledger {held.path} is behind the fleet: it holds v{held.version}, {retained} ({why})"
    )


async def start_check(
    client: aiomqtt.Client,
    topic: str,
    ledger: Ledger,
    version: int,
    cfg: AggregatorConfig,
    on_worker: Callable[..., Awaitable[Any]],
) -> tuple[RunRecord, list[aiomqtt.Message], Seen | None]:
    """Agree with the retained model before publishing anything; the run to serve, the
    messages that arrived meanwhile (not acknowledged yet) and what the broker retains.
    ``on_worker`` runs the ledger's calls on the intake's thread."""
    retained, stash = await read_retained_model(client, topic)
    record, origin = await on_worker(ledger.run)
    held = Held(ledger.path, record, version, origin, ledger.wal_lost)
    start = decide(held, retained, accept=cfg.accept_rollback, new=cfg.new_run)
    if start.note:
        log.warning("start check: %s", start.note)
    await on_worker(ledger.set_run, start.record)
    return start.record, stash, retained
