"""aggregator.storage: a full or failing disk is a StorageError (exit 3), a bug is not."""

from __future__ import annotations

import errno
import sqlite3

from aggregator.storage import storage_failure
from fedmq.errors import StorageError


def _sqlite_error(code: int) -> sqlite3.Error:
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorcode = code
    return exc


def test_full_and_failing_disks_are_storage_errors():
    full = storage_failure(OSError(errno.ENOSPC, "No space left on device"), "cannot write")
    assert isinstance(full, StorageError) and full.reason == "disk_full"
    assert full.exit_code == 3
    assert storage_failure(_sqlite_error(sqlite3.SQLITE_FULL)).reason == "disk_full"
    assert storage_failure(OSError(errno.EROFS, "Read-only")).reason == "storage_failed"


def test_found_inside_exception_groups_and_causes():
    try:
        raise RuntimeError("wrapped") from _sqlite_error(sqlite3.SQLITE_FULL)
    except RuntimeError as exc:
        wrapped = exc
    group = Exception("tasks")  # what a TaskGroup raises, also on Python 3.10
    group.exceptions = [ValueError("other"), wrapped]
    assert storage_failure(group).reason == "disk_full"


def test_anything_else_is_not():
    assert storage_failure(ValueError("bug")) is None
    assert storage_failure(OSError(errno.EACCES, "Permission denied")) is None
    assert storage_failure(_sqlite_error(sqlite3.SQLITE_CORRUPT)) is None
