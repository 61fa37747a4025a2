"""aggregator.stall: which chunk timeouts are a stalled broker window, on a fake clock."""

from __future__ import annotations

import logging

import pytest

from aggregator.stall import WindowStalls

TIMEOUT = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stalls(clock: Clock) -> WindowStalls:
    return WindowStalls(TIMEOUT, 64, logging.getLogger("test.stall"), clock)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_silence_with_partials_held_is_one_stall_logged_once(stalls, clock, caplog) -> None:
    stalls.heard(partials=2, chunks=4)
    clock.now += TIMEOUT + 0.1
    assert stalls.timed_out()
    # The other partial of that silence, a sweep later: the same stall.
    clock.now += TIMEOUT / 4
    assert not stalls.timed_out()
    assert stalls.count == 1
    [line] = warnings(caplog)
    assert "4 chunks of 2 partial updates" in line and "max_inflight_messages" in line
    assert "below 64 chunks" in line


def test_each_silence_is_a_stall_of_its_own(stalls, clock, caplog) -> None:
    for _ in range(2):
        stalls.heard(partials=3, chunks=5)
        clock.now += TIMEOUT
        assert stalls.timed_out()
    assert stalls.count == 2 and len(warnings(caplog)) == 2


def test_the_silence_may_start_a_little_after_the_first_chunk(stalls, clock) -> None:
    # The last chunk that filled the window came a fifth of the timeout after the
    # first chunk of the message that now times out.
    stalls.heard(partials=2, chunks=4)
    clock.now += TIMEOUT * 0.8
    assert stalls.timed_out()


def test_traffic_that_kept_flowing_is_no_stall(stalls, clock, caplog) -> None:
    # Two devices died mid-update; the fleet's other updates kept arriving.
    for _ in range(int(TIMEOUT)):
        clock.now += 1.0
        stalls.heard(partials=2, chunks=4)
    assert not stalls.timed_out()
    assert stalls.count == 0 and warnings(caplog) == []


def test_one_partial_held_is_no_stall(stalls, clock) -> None:
    # One device that died mid-update while the fleet was quiet.
    stalls.heard(partials=1, chunks=2)
    clock.now += 2 * TIMEOUT
    assert not stalls.timed_out() and stalls.count == 0


def test_a_new_session_starts_a_new_silence(stalls, clock) -> None:
    stalls.heard(partials=2, chunks=4)
    clock.now += TIMEOUT / 2
    stalls.heard(0, 0)  # what Inbox.receive does on a new session
    clock.now += TIMEOUT
    assert not stalls.timed_out()
