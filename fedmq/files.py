"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

The one implementation behind every file fedmq replaces in place (data sets, ONNX
exports, the agent's sequence number, keys and certificates).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(
    path: str | os.PathLike[str], *, text: bool = False, mode: int = 0o644
) -> Iterator[IO[Any]]:
    """A file to write that replaces ``path`` only when the block ends without error.

    It is a temp file beside ``path`` (0600 from its creation, so a key is never briefly
    readable), given ``mode`` (not filtered by the umask), fsynced, then renamed over
    ``path``; the rename is fsynced too where the platform can open a directory. On an
    error the temp file is removed and ``path`` is untouched. ``text`` opens it as UTF-8.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        fh = os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb")
        with fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` atomically with ``mode``; return the path."""
    with atomic_open(path, text=isinstance(data, str), mode=mode) as fh:
        fh.write(data)
    return Path(path)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; not every platform can open a directory."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
