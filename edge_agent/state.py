"""What an agent keeps on disk between runs: the next update sequence number.

The number is reserved (written and fsynced) *before* the update that carries it is
published, so a crash or restart can skip a seq but can never send one twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedmq.errors import ConfigError
from fedmq.files import atomic_write

STATE_FILE = "agent-state.json"


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
        if not self.path.exists():
            return 0
        try:
            value = json.loads(self.path.read_text())["next_seq"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                "bad_state_file",
                f"{self.path} is damaged ({exc}); move it away only if no update was ever sent",
            ) from exc
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError("bad_state_file", f"{self.path} holds an invalid next_seq {value!r}")
        return value

    @property
    def last(self) -> int:
        """The last seq handed out (-1 before the first)."""
        return self._next - 1

    def reserve(self) -> int:
        """Durably reserve and return the next seq."""
        seq = self._next
        atomic_write(self.path, json.dumps({"next_seq": seq + 1}))
        self._next = seq + 1
        return seq
