"""The progress line and the rejection summaries, on a fake clock."""

from __future__ import annotations

import itertools
import logging

import pytest

from aggregator.counters import Counters
from aggregator.progress import Progress
from aggregator.rejections import RejectionLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_progress_writes_one_line_at_most_every_interval(caplog):
    clock = Clock()
    log = logging.getLogger("test.progress")
    progress = Progress(log, 10.0, clock, accepted=100)  # a resumed ledger's count
    written = []
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for step in range(100):  # 50 s of ticks every 0.5 s, one accepted update each
            clock.now += 0.5
            if progress.tick(step // 10, 0.5 + step / 1000, 101 + step, 3):
                written.append(clock.now)
    assert len(written) == 5
    assert all(b - a >= 10.0 for a, b in itertools.pairwise(written))
    first = _lines(caplog)[0]
    assert first == "progress: version 1, accuracy 0.5190, 2.0 updates/s, 3 device(s) online"
    assert progress.due_in() == pytest.approx(10.0 - (clock.now - written[-1]))


def test_progress_is_quiet_while_nothing_changes(caplog):
    clock = Clock()
    progress = Progress(logging.getLogger("test.quiet"), 10.0, clock)
    with caplog.at_level(logging.INFO, logger="test.quiet"):
        clock.now += 10
        assert progress.tick(3, None, 7, 2)
        for _ in range(5):
            clock.now += 10
            assert not progress.tick(3, None, 7, 2)
        clock.now += 10
        assert progress.tick(3, None, 7, 1)  # a device went offline: worth a line
    assert _lines(caplog)[0].startswith("progress: version 3, accuracy -, 0.7 updates/s")
    assert len(_lines(caplog)) == 2


def test_a_thousand_rejections_of_one_reason_are_a_few_lines_and_a_summary(caplog):
    clock = Clock()
    rejections = RejectionLog(logging.getLogger("test.reject"), clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.reject"):
        for i in range(1000):
            clock.now += 0.01  # 1,000 in 10 s, from four devices
            rejections.note("norm_bound", f"dev{i % 4}", f"norm {i} above the bound")
        rejections.flush()  # the window has not passed: nothing yet
        assert len(caplog.records) == 3
        clock.now += 60
        rejections.flush()
    lines = _lines(caplog)
    assert len(lines) == 4
    assert lines[0] == "rejected update from dev0 [norm_bound]: norm 0 above the bound"
    assert lines[3].startswith("rejected 997 more update(s) [norm_bound] in 70s")
    assert "dev3 (250)" in lines[3] and "and 1 other device(s)" in lines[3]


def test_each_reason_has_its_own_limit_and_the_last_window_is_summarised_at_stop(caplog):
    clock = Clock()
    counters = Counters(logging.getLogger("test.counters"))
    counters.rejections.clock = clock
    with caplog.at_level(logging.WARNING, logger="test.counters"):
        for i in range(20):
            counters.reject("old_seq", f"seq {i} is old", "pi-1")
            counters.reject("bad_topic", "not an update topic", None)
        counters.rejections.flush(final=True)
    lines = _lines(caplog)
    assert len(lines) == 8  # 3 + 3 one by one, one summary each
    assert (
        "rejected 17 more update(s) [old_seq] in 0s, not logged one by one: from pi-1 (17)" in lines
    )
    assert "rejected update from ? [bad_topic]: not an update topic" in lines
    assert counters.rejected == {"old_seq": 20, "bad_topic": 20}
