"""Small asyncio helpers shared by the agent and the aggregator (Python 3.10 and later)."""

from __future__ import annotations

import asyncio
import sys

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup
else:  # pragma: no cover - 3.10 only
    from taskgroup import TaskGroup

__all__ = ["TaskGroup", "only", "wait_any", "wait_event"]


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> bool:
    """Wait until one of ``events`` is set or ``timeout`` passes; True if one was set.

    Not ``asyncio.wait_for``: before Python 3.12 it can swallow the caller's
    cancellation when the inner wait finishes at the same moment (CPython gh-86296).
    """
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
    return any(e.is_set() for e in events)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` passes; True if it was set."""
    return await wait_any(event, timeout=timeout)


def only(exc: BaseException, types: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    """True when ``exc`` is one of ``types``, or an exception group made only of them.

    A TaskGroup wraps a child's failure in an ExceptionGroup; a lost connection must
    still be recognised as a lost connection.
    """
    if isinstance(exc, types):
        return True
    inner = getattr(exc, "exceptions", None)
    return bool(inner) and all(only(e, types) for e in inner)
