"""aggregator.startup.decide: which ledgers may start against the retained model."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.ledger_schema import RunRecord
from aggregator.startup import Held, Seen, decide
from fedmq.errors import ConfigError

RUN, OTHER, NEW = "0123456789abcdef", "fedcba9876543210", "00000000000000ff"
PATH = Path("out/ledger.sqlite")


def _held(version=10, run=RUN, rollbacks=0, replaces=None, origin=None, wal_lost=False) -> Held:
    return Held(PATH, RunRecord(run, rollbacks, replaces), version, origin, wal_lost)


def _decide(held, seen, **flags):
    return decide(held, seen, make_run=lambda: NEW, **flags)


@pytest.mark.parametrize(
    ("held", "seen"),
    [
        (_held(10), None),  # nothing retained
        (_held(10), Seen(RUN, 10)),  # a plain restart
        (_held(12), Seen(RUN, 10)),  # the last versions were not published before a crash
        (_held(5, rollbacks=1), Seen(RUN, 10)),  # an accepted rollback not yet published
        (_held(0, run=NEW, replaces=RUN), Seen(RUN, 10)),  # a --new-run not yet published
    ],
)
def test_no_conflict_starts_with_the_ledgers_run(held, seen):
    start = _decide(held, seen)
    assert start.record.run == held.record.run and start.note is None
    assert start.record.rollbacks == held.record.rollbacks


def test_a_new_ledger_without_a_retained_model_is_a_new_run():
    assert _decide(_held(0, run=None, origin="new"), None).record == RunRecord(NEW, 0)


def test_a_ledger_from_before_run_ids_adopts_the_fleets_run():
    assert _decide(_held(10, run=None), Seen(RUN, 10)).record.run == RUN


@pytest.mark.parametrize(
    ("held", "seen", "reason", "words"),
    [
        (_held(145), Seen(RUN, 310), "ledger_behind", "holds v145, the broker retains model v310"),
        (_held(200), Seen(RUN, 100, rollbacks=1), "ledger_behind", "behind the fleet"),
        (_held(0, run=None, origin="empty"), Seen(RUN, 310), "ledger_empty", "empty (0 bytes)"),
        (_held(0, run=None, origin="new"), Seen(RUN, 310), "ledger_empty", "is new"),
        (_held(10, run=OTHER), Seen(RUN, 10), "run_mismatch", f"of run {OTHER}"),
        (_held(10, wal_lost=True), Seen(RUN, 10), "wal_lost", "-wal file is gone"),
        (_held(10, wal_lost=True), None, "wal_lost", "acknowledged since its last checkpoint"),
        (_held(5, wal_lost=True), Seen(RUN, 9), "ledger_behind", "-wal file was lost after"),
    ],
)
def test_conflicts_are_refused_with_one_line_naming_both_ways_out(held, seen, reason, words):
    with pytest.raises(ConfigError) as info:
        _decide(held, seen)
    err = info.value
    assert err.reason == reason and err.exit_code == 2
    assert words in err.message and "\n" not in err.message
    assert "--accept-rollback" in err.message and "--new-run" in err.message


def test_accept_rollback_announces_one_more_rollback_of_the_same_run():
    start = _decide(_held(145), Seen(RUN, 310, rollbacks=2), accept=True)
    assert start.record == RunRecord(RUN, 3)
    assert "rollback 3" in start.note
    # An empty ledger restarts the same run from v0, announced as a rollback too.
    empty = _held(0, run=None, origin="empty")
    assert _decide(empty, Seen(RUN, 310), accept=True).record == RunRecord(RUN, 1)


def test_new_run_takes_a_fresh_id_and_remembers_what_it_replaces():
    start = _decide(_held(145), Seen(RUN, 310), new=True)
    assert start.record == RunRecord(NEW, 0, RUN)


def test_the_flags_change_nothing_without_a_conflict():
    for flags in ({"accept": True}, {"new": True}):
        assert _decide(_held(10), Seen(RUN, 10), **flags).record == RunRecord(RUN, 0)


def test_both_flags_at_once_are_refused():
    from aggregator.config import AggregatorConfig
    from fedmq.config import BrokerConfig

    with pytest.raises(ConfigError, match="not both"):
        AggregatorConfig(
            broker=BrokerConfig.from_url("mqtt://127.0.0.1"), accept_rollback=True, new_run=True
        )


def test_accept_rollback_continues_a_ledger_that_lost_its_wal_without_a_rollback():
    start = _decide(_held(10, wal_lost=True), Seen(RUN, 10), accept=True)
    assert start.record == RunRecord(RUN, 0) and "lost" in start.note
    assert _decide(_held(10, wal_lost=True), None, new=True).record == RunRecord(NEW, 0)
