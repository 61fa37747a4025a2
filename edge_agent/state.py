"""What an agent keeps on disk between runs: the next update sequence number.

The number is reserved (written and fsynced) *before* the update that carries it is
published, so a crash or restart can skip a seq but can never send one twice. The file
is replaced atomically: power lost mid-write leaves the old file or the new one.

A lost or damaged file is not fatal: the aggregator keeps the last seq it handled
(applied or refused) from each device (its retained ``DeviceLedger``), and ``resync``
moves past it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fedmq.errors import ConfigError
from fedmq.files import atomic_write

STATE_FILE = "agent-state.json"
log = logging.getLogger("fedmq.agent")


class SeqStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / STATE_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                "bad_state_dir", f"cannot create state dir {self.path.parent}: {exc}"
            ) from exc
        self._next = self._load()

    def _load(self) -> int:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            log.info("no state file %s: seq starts at 0 or at the aggregator's ledger", self.path)
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            return self._damaged(f"unreadable: {exc}")
        try:
            value = json.loads(text)["next_seq"]
        except (ValueError, KeyError, TypeError) as exc:
            return self._damaged(f"not valid JSON with next_seq: {type(exc).__name__}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return self._damaged(f"invalid next_seq {value!r}")
        return value

    def _damaged(self, why: str) -> int:
        aside = self.path.with_name(self.path.name + ".damaged")
        try:
            os.replace(self.path, aside)
            kept = f"; kept as {aside}"
        except OSError:
            kept = ""
        log.warning(
            "state file %s is damaged (%s)%s; seq will resync from the aggregator's ledger",
            self.path,
            why,
            kept,
        )
        return 0

    @property
    def last(self) -> int:
        """The last seq handed out (-1 before the first)."""
        return self._next - 1

    def resync(self, accepted: int) -> int | None:
        """Move past ``accepted``, the last seq the aggregator handled from this device.

        Returns the seq the store would have used instead when it moved, else None.
        """
        if accepted < self._next:
            return None
        before, self._next = self._next, accepted + 1
        return before

    def reserve(self) -> int:
        """Durably reserve and return the next seq."""
        seq = self._next
        atomic_write(self.path, json.dumps({"next_seq": seq + 1}))
        self._next = seq + 1
        return seq
