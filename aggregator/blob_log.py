"""The ledger's large values, appended to segment files beside its SQLite file.

Update payloads and checkpoint states are nearly all the bytes the ledger writes. Each
is written once, read only by a restart's replay, and dropped at a later checkpoint.
Kept as SQLite blobs, each was written to the WAL, copied into the file, deleted and
its pages vacuumed, which cost 2-10x the intake itself (benchmarks/RESULTS.md, "Intake
throughput"). Here a value is one append to the current segment. SQLite keeps only its
``BlobRef`` (segment, offset, length, CRC-32), in the same transaction as its event. A
value without a committed reference is garbage, and every reference names bytes
written before its commit.

Durability is the SQLite file's own. The appends reach the OS before the commit, so a
killed process loses nothing. A segment is fsynced when it is closed (at each
checkpoint, whose state must outlive the segments it replaces), and with ``durable``
before every commit. A power cut under ``synchronous=NORMAL`` can leave a committed
reference to bytes that never reached the disk. ``read`` tells that case by the length
and the CRC (it returns None), and the ledger treats it as a lost WAL.
"""

from __future__ import annotations

import contextlib
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

SEGMENT = re.compile(r"^(\d{8})\.log$")


@dataclass(frozen=True)
class BlobRef:
    segment: int
    offset: int
    length: int
    crc: int


class BlobLog:
    """Append-only segments ``NNNNNNNN.log`` in ``directory`` (0700, files 0600)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700, exist_ok=True)
        # Never append after what a crash left: a new process starts a new segment.
        self.segment = max(self.segments(), default=0) + 1
        self._fd: int | None = None
        self._offset = 0
        self._unsynced = False
        self._created = False  # a new file: its name in the directory needs an fsync too

    def segments(self) -> list[int]:
        names = (SEGMENT.match(p.name) for p in self.dir.iterdir())
        return sorted(int(m.group(1)) for m in names if m)

    def _path(self, segment: int) -> Path:
        return self.dir / f"{segment:08d}.log"

    def append(self, data: bytes) -> BlobRef:
        if self._fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
            self._fd = os.open(self._path(self.segment), flags, 0o600)
            self._offset = 0
            self._created = True
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        ref = BlobRef(self.segment, self._offset, len(data), zlib.crc32(data))
        self._offset += len(data)
        self._unsynced = True
        return ref

    def sync(self) -> None:
        """Make what was appended durable (before the commit that references it)."""
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = False
        if self._created:
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._created = False

    def rotate(self) -> None:
        """Close the current segment, durably; the next append starts a new one."""
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None
            self.segment += 1

    def read(self, ref: BlobRef) -> bytes | None:
        """The value ``ref`` names; None if it is missing, short or damaged."""
        try:
            with open(self._path(ref.segment), "rb") as f:
                f.seek(ref.offset)
                data = f.read(ref.length)
        except OSError:
            return None
        if len(data) != ref.length or zlib.crc32(data) != ref.crc:
            return None
        return data

    def keep(self, live: set[int]) -> None:
        """Delete every closed segment not in ``live`` (after the commit that freed them)."""
        for segment in self.segments():
            if segment not in live and segment != self.segment:
                with contextlib.suppress(FileNotFoundError):
                    self._path(segment).unlink()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
