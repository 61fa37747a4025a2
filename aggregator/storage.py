"""Telling a storage failure (a full disk, a read-only or failing file system) from a bug.

The aggregator cannot serve without writing its ledger, so such a failure ends it with
one ``StorageError`` line and exit status 3, which the systemd unit does not restart
(``RestartPreventExitStatus``): restarting would only fail again until someone frees
space. Anything else stays what it is.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3

from fedmq.errors import FedmqError, StorageError

FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
FAILED_ERRNOS = {errno.EROFS, errno.EIO}
FULL_SQLITE = {sqlite3.SQLITE_FULL}
FAILED_SQLITE = {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY}


def _reason(exc: BaseException) -> str | None:
    if isinstance(exc, OSError):
        if exc.errno in FULL_ERRNOS:
            return "disk_full"
        return "storage_failed" if exc.errno in FAILED_ERRNOS else None
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # the primary code
        if code in FULL_SQLITE:
            return "disk_full"
        return "storage_failed" if code in FAILED_SQLITE else None
    return None


def _leaves(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, through exception groups (a TaskGroup wraps failures)."""
    inner = getattr(exc, "exceptions", None)
    if inner:
        return [leaf for e in inner for leaf in _leaves(e)]
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 8:
        chain.append(chain[-1].__cause__)
    return chain


def storage_failure(exc: BaseException, what: str = "cannot write") -> StorageError | None:
    """A ``StorageError`` if ``exc`` is (or wraps) a storage failure, else None."""
    if isinstance(exc, StorageError):
        return exc
    for leaf in _leaves(exc):
        if isinstance(leaf, StorageError):
            return leaf
        reason = _reason(leaf)
        if reason is not None:
            hint = "free space, then start it again" if reason == "disk_full" else "fix it first"
            return StorageError(reason, f"{what}: {leaf} ({hint})")
    return None


def why_offline(exc: BaseException, failure: FedmqError | None) -> tuple[str | None, str | None]:
    """The (reason, message) of the offline status an exit with ``exc`` publishes."""
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
        return None, None  # stopped, not failed
    if failure is None and isinstance(exc, FedmqError):
        failure = exc
    if failure is not None:
        return failure.reason, failure.message
    leaf = exc
    while getattr(leaf, "exceptions", None):  # a TaskGroup's: name the failure itself
        leaf = leaf.exceptions[0]  # type: ignore[attr-defined]
    return "crashed", f"{type(leaf).__name__}: {leaf}"
