"""The recent history the aggregator retains on the broker, and history.jsonl it comes from."""

from __future__ import annotations

from aggregator.history import History, Recent, read_history
from fedmq.history import MAX_POINTS, HistorySummary

RUN, OTHER = "00112233aabbccdd", "ffeeddccbbaa9988"


def _line(version: int, run: str = RUN) -> dict:
    return {"version": version, "time": 100.0 + version, "accuracy": version / 1000,
            "loss": 1.0, "updates_applied": 3 * version, "bytes_in": 1, "run": run}  # fmt: skip


def test_recent_keeps_the_last_points_of_its_run_and_says_when_it_changed(tmp_path):
    recent = Recent(RUN, tmp_path)
    assert not recent.changed and recent.summary(1.0).versions == []
    for v in range(MAX_POINTS + 7):
        recent.add(_line(v))
    recent.add(_line(3))  # an older version: versions only increase
    assert recent.changed
    summary = HistorySummary.decode(recent.summary(9.0).encode())
    assert not recent.changed
    assert summary.versions == list(range(7, MAX_POINTS + 7))
    assert summary.accepted[0] == 21 and summary.accuracy[0] == 0.007 and summary.run == RUN


def test_a_restart_of_the_same_run_continues_from_history_jsonl(tmp_path):
    history = History(tmp_path / "history.jsonl", max_bytes=2000)
    for v in range(40):  # rotated into history.jsonl.1 and .2 on the way
        history.append(_line(v, OTHER if v < 5 else RUN))
    with (tmp_path / "history.jsonl").open("a") as fh:
        fh.write("damaged\n")
    assert (tmp_path / "history.jsonl.2").exists()
    kept = [r["version"] for r in read_history(tmp_path)]
    assert kept == list(range(40 - len(kept), 40))  # oldest first; the oldest rotated away
    ours = [r["version"] for r in read_history(tmp_path) if r["run"] == RUN]
    assert Recent(RUN, tmp_path).summary(1.0).versions == ours
    assert Recent("0" * 16, tmp_path).summary(1.0).versions == []  # a new run starts afresh
