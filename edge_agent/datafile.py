"""The device's data file, watched: its feature statistics, and a reload when it changes.

The file's (mtime, size) is polled cheaply; only when that moves is the content hashed,
and only a new digest reloads the data, so touching a file or rewriting it with the
same bytes changes nothing. A file that fails to load keeps the data held before.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedmq.data import Dataset

if TYPE_CHECKING:
    from edge_agent.data import LocalData
from fedmq.featurestats import FeatureStats
from fedmq.preprocess import Moments

log = logging.getLogger("fedmq.agent")

Loader = Callable[[Path], "LocalData"]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_digest(data: Dataset) -> str:
    """For data that came without a file (tests, the demo): a digest of the arrays."""
    h = hashlib.sha256(np.ascontiguousarray(data.x).tobytes())
    h.update(np.ascontiguousarray(data.y).tobytes())
    return h.hexdigest()


def feature_stats(
    x: np.ndarray, names: list[str] | None, *, device: str, digest: str
) -> FeatureStats:
    moments = Moments.of(x)
    return FeatureStats.of(moments, device=device, digest=digest, at=time.time(), features=names)


class DataFile:
    """``data`` as loaded from ``path`` (None: data given in memory, never reloaded)."""

    def __init__(self, data: LocalData, path: Path | None, loader: Loader | None) -> None:
        self.data = data
        self.path = path if loader is not None else None  # watched only with a loader
        self.loader = loader
        self._seen = self._stamp()
        source = self.path or data.path
        if source is not None:
            self.digest = file_digest(source)
        else:  # in memory, so read without a schema: plain is there
            assert data.plain is not None
            self.digest = data_digest(data.plain)

    def _stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Reload when the content changed (blocking: run it in a thread); True if it did."""
        stamp = self._stamp()
        if self.path is None or self.loader is None or stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        try:
            digest = file_digest(self.path)
            if digest == self.digest:
                return False
            data = self.loader(self.path)
        except Exception as exc:  # a half-written or broken file: keep what we have
            log.warning("data file %s changed but cannot be loaded (%s); keeping the old data",
                        self.path, exc)  # fmt: skip
            return False
        self.data, self.digest = data, digest
        log.info("data file %s changed: %d rows now", self.path, data.samples)
        return True
