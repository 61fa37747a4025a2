"""Pull on ready against a real broker: the agent downloads a model when it is ready to train,
not every version published while it trains (issue 12, item 4)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import agent_helpers as h
import aiomqtt
import pytest

from edge_agent.agent import Agent
from edge_agent.pull import CAP, ModelPull, versions_since
from fedmq.topics import Topics
from fedmq.wire import Update

pytestmark = pytest.mark.broker


async def _updates(observer, topics: Topics, n: int) -> list[Update]:
    return [
        Update.decode(bytes((await h.next_message(observer, topics.updates_filter)).payload))
        for _ in range(n)
    ]


async def _start(
    observer: aiomqtt.Client, topics: Topics, agent: Agent
) -> tuple[asyncio.Task[None], asyncio.Event]:
    """``agent`` running on a fleet whose broker retains v0; set the event to stop it."""
    await observer.publish(topics.model_global, h.model(0), qos=1, retain=True)
    stop = asyncio.Event()
    return asyncio.create_task(agent.run(stop)), stop


async def test_versions_published_during_a_run_are_not_downloaded(broker, fleet, tmp_path):
    topics = Topics(fleet)
    status = topics.device_status("pi-1")
    async with h.client(broker.url, topics.updates_filter, status) as observer:
        agent = h.agent(broker.url, fleet, tmp_path, compute_delay=0.5)
        task, stop = await _start(observer, topics, agent)
        # "training" is published after the UNSUBACK: nothing below reaches the agent.
        await h.status_until(observer, status, "training")
        for version in range(1, 6):
            await observer.publish(topics.model_global, h.model(version), qos=1, retain=True)
        first, second = await _updates(observer, topics, 2)
        stop.set()
        await task
    # The retained v5 (published while it was unsubscribed) is what the next run pulls.
    assert (first.base_version, second.base_version) == (0, 5)
    assert agent.stats.model_downloads == 2
    assert agent.stats.models_received == 2


async def test_the_retained_copy_of_the_model_just_trained_on_is_not_a_second_run(
    broker, fleet, tmp_path
):
    topics = Topics(fleet)
    status = topics.device_status("pi-1")
    async with h.client(broker.url, topics.updates_filter, status) as observer:
        agent = h.agent(broker.url, fleet, tmp_path)
        task, stop = await _start(observer, topics, agent)
        (first,) = await _updates(observer, topics, 1)
        await h.status_until(observer, status, "idle")
        # Retained, as the aggregator publishes: whether it reaches the broker before or
        # after the agent's new SUBSCRIBE, the agent gets it and must not wait forever.
        await observer.publish(topics.model_global, h.model(1), qos=1, retain=True)
        (second,) = await _updates(observer, topics, 1)
        stop.set()
        await task
    assert (first.base_version, second.base_version) == (0, 1)
    assert second.seq == first.seq + 1
    # v0; the probe's copy of v0 and, as it was not new, the subscription's copy (either
    # may come before v1 is retained); then v1. Never a run on v0 twice.
    assert 2 <= agent.stats.model_downloads <= 4


class _CountingPull(ModelPull):
    """Counts how a session asked for models: probes, subscriptions held, and waits. A session
    starts at ``start_score`` (-CAP: pulling has paid already, so its first wait probes)."""

    probes = 0
    holds = 0
    waits = 0
    held = asyncio.Event()
    waited = asyncio.Event()  # set on each wait
    start_score = -CAP
    last: ModelPull

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.score = self.start_score
        type(self).last = self

    async def probe(self) -> None:
        type(self).probes += 1
        await super().probe()

    async def open(self) -> None:
        if not self.subscribed:
            type(self).holds += 1
            type(self).held.set()
        await super().open()
        type(self).waits += 1
        type(self).waited.set()


class _CountingAgent(Agent):
    pull = _CountingPull


def _counting(start_score: int = -CAP) -> type[_CountingPull]:
    _CountingPull.probes, _CountingPull.holds, _CountingPull.held = 0, 0, asyncio.Event()
    _CountingPull.waits, _CountingPull.start_score = 0, start_score
    _CountingPull.waited = asyncio.Event()
    return _CountingPull


async def test_between_runs_the_agent_probes_for_the_retained_model_alone(broker, fleet, tmp_path):
    topics = Topics(fleet)
    status = topics.device_status("pi-1")
    pull = _counting()
    async with h.client(broker.url, topics.updates_filter, status) as observer:
        agent = h.agent(broker.url, fleet, tmp_path, compute_delay=0.3, cls=_CountingAgent)
        task, stop = await _start(observer, topics, agent)
        await h.status_until(observer, status, "training")
        for version in range(1, 4):
            await observer.publish(topics.model_global, h.model(version), qos=1, retain=True)
        first, second = await _updates(observer, topics, 2)
        stop.set()
        await task
    assert (first.base_version, second.base_version) == (0, 3)
    # The session's one SUBSCRIBE held until v0 came; then one probe, answered by v3.
    assert (pull.holds, pull.probes) == (1, 1)
    assert agent.stats.model_downloads == 2


async def test_a_probe_that_nothing_answers_falls_back_to_holding_the_subscription(
    broker, fleet, tmp_path
):
    topics = Topics(fleet)
    status = topics.device_status("pi-1")
    pull = _counting()
    async with h.client(broker.url, topics.updates_filter, status) as observer:
        agent = h.agent(
            broker.url, fleet, tmp_path, compute_delay=0.3, timeout=2.0, cls=_CountingAgent
        )
        task, stop = await _start(observer, topics, agent)
        await h.status_until(observer, status, "training")
        pull.held.clear()
        # An operator clears the retained model during the run: the probe gets nothing.
        await observer.publish(topics.model_global, b"", qos=1, retain=True)
        (first,) = await _updates(observer, topics, 1)
        await h.while_running(task, pull.held.wait())
        await observer.publish(topics.model_global, h.model(1), qos=1, retain=True)
        (second,) = await _updates(observer, topics, 1)
        stop.set()
        await task
    assert (first.base_version, second.base_version) == (0, 1)
    assert (pull.probes, pull.holds) == (1, 2)


async def test_a_probe_sends_its_unsubscribe_before_the_broker_answers(broker, fleet):
    topic = Topics(fleet).model_global_filter
    model_topic = Topics(fleet).model_global
    async with h.client(broker.url) as c:
        await c.publish(model_topic, h.model(4), qos=1, retain=True)
        events: list[str] = []
        paho = c._client
        sub, unsub, on_sub = paho.subscribe, paho.unsubscribe, paho.on_subscribe

        def record(name: str, call: Any) -> Any:  # a spy around one of paho's methods
            def spy(*args: Any, **kwargs: Any) -> Any:
                events.append(name)
                return call(*args, **kwargs)

            return spy

        paho.subscribe, paho.unsubscribe = record("sub", sub), record("unsub", unsub)
        paho.on_subscribe = record("suback", on_sub)
        pull = ModelPull(c, topic)
        await pull.probe()
        assert events[:3] == ["sub", "unsub", "suback"]
        assert (await h.next_message(c, topic)).payload == h.model(4)
        # Unsubscribed: a version published now does not come. The broker forwards one
        # client's publishes in order, so a marker that arrives first shows v5 never will.
        marker = f"{model_topic}-marker"
        await c.subscribe(marker, qos=1)
        await c.publish(model_topic, h.model(5), qos=1, retain=True)
        await c.publish(marker, b"after v5", qos=1)
        assert str((await h.next_message(c, "#")).topic) == marker
    assert (pull.subscribed, pull.follow) == (False, False)


class _PublishBeforeUnsubscribe(ModelPull):
    """A model published while this session's UNSUBSCRIBE is in flight: the broker handles
    the PUBLISH first, so it still delivers that model to this subscription."""

    late: bytes = b""
    subscribes = 0

    async def open(self) -> None:
        if not self.subscribed:
            type(self).subscribes += 1
        await super().open()

    async def close(self) -> None:
        if self.subscribed and self.late:
            # The subscription is the model's filter (model/global/#, for its chunks).
            model_topic = self.topic.removesuffix("/#")
            await self.client.publish(model_topic, self.late, qos=1, retain=True)
            type(self).late = b""
        await super().close()


class _RacingAgent(Agent):
    pull = _PublishBeforeUnsubscribe


async def test_a_model_arriving_while_unsubscribing_is_the_one_trained_on(
    mosquitto, fleet, tmp_path
):
    topics = Topics(fleet)
    _PublishBeforeUnsubscribe.late, _PublishBeforeUnsubscribe.subscribes = h.model(7), 0
    async with h.client(mosquitto.url, topics.updates_filter) as observer:
        agent = h.agent(mosquitto.url, fleet, tmp_path, compute_delay=0.5, cls=_RacingAgent)
        task, stop = await _start(observer, topics, agent)
        bases = []
        while 7 not in bases:
            bases += [u.base_version for u in await _updates(observer, topics, 1)]
        subscribes = _PublishBeforeUnsubscribe.subscribes
        stop.set()
        await task
    # v7 came in while the run on v0 was starting: the run takes v7 when the agent has
    # read it by the UNSUBACK (it is delivered first), else v7 is the next run.
    assert bases in ([7], [0, 7]), bases
    assert subscribes == 1  # either way v7 was held already: no second SUBSCRIBE
    assert agent.stats.model_downloads == 2


async def test_a_reconnected_agent_subscribes_again_and_gets_the_retained_model(
    new_broker, fleet, tmp_path
):
    topics = Topics(fleet)
    b = new_broker("mosquitto").start()
    async with h.client(b.url, topics.updates_filter) as observer:
        agent = h.agent(b.url, fleet, tmp_path, backoff_base=0.05)
        task, stop = await _start(observer, topics, agent)
        await _updates(observer, topics, 1)
    b.restart()
    async with h.client(b.url, topics.updates_filter) as observer:
        # Published while the agent is away or reconnecting: the retained copy reaches it.
        await observer.publish(topics.model_global, h.model(3), qos=1, retain=True)
        (after,) = await _updates(observer, topics, 1)
        stop.set()
        await task
    assert after.base_version == 3
    assert agent.stats.connects >= 2


async def _waits(pull: type[_CountingPull], n: int) -> None:
    while pull.waits < n:  # the agent's waits for a newer model, subscribed or not
        pull.waited.clear()
        await pull.waited.wait()


async def test_a_fleet_whose_versions_are_rarer_than_runs_follows_them_one_download_each(
    broker, fleet, tmp_path
):
    topics = Topics(fleet)
    pull = _counting(start_score=0)  # a new session: no evidence either way
    async with h.client(broker.url, topics.updates_filter) as observer:
        agent = h.agent(broker.url, fleet, tmp_path, compute_delay=0.1, cls=_CountingAgent)
        task, stop = await _start(observer, topics, agent)
        bases = []
        for version in range(1, 6):
            # As FedBuff's buffer in a small fleet: the next version needs this device's
            # update, and comes once the agent waits for it (past its SUBACK).
            bases += [u.base_version for u in await _updates(observer, topics, 1)]
            await h.while_running(task, asyncio.wait_for(_waits(pull, version + 1), 10))
            await observer.publish(topics.model_global, h.model(version), qos=1, retain=True)
        bases += [u.base_version for u in await _updates(observer, topics, 1)]
        await h.while_running(task, asyncio.wait_for(_waits(pull, 7), 10))
        stop.set()
        await task
    assert bases == [0, 1, 2, 3, 4, 5]
    # The session's SUBSCRIBE and its first wait's (which the broker answers with v0 again,
    # the one copy wasted); then subscribed throughout: each version once, never a probe.
    assert (pull.holds, pull.probes, pull.last.follow) == (2, 0, True)
    assert agent.stats.model_downloads == 7


async def test_a_busy_fleet_still_pulls_one_download_per_run(broker, fleet, tmp_path):
    topics = Topics(fleet)
    status = topics.device_status("pi-1")
    pull = _counting(start_score=0)
    async with h.client(broker.url, topics.updates_filter, status) as observer:
        agent = h.agent(broker.url, fleet, tmp_path, compute_delay=0.4, cls=_CountingAgent)
        task, stop = await _start(observer, topics, agent)
        bases = []
        for run in range(3):  # three versions during every run
            await h.status_until(observer, status, "training")
            for version in range(3 * run + 1, 3 * run + 4):
                await observer.publish(topics.model_global, h.model(version), qos=1, retain=True)
            bases += [u.base_version for u in await _updates(observer, topics, 1)]
        await h.status_until(observer, status, "training")  # the fourth run, on v9
        stop.set()
        await task
    assert bases == [0, 3, 6]
    # The first wait held the subscription (no evidence yet), its count (one download
    # against three versions) made the agent pull, and from then on it probes.
    assert (pull.holds, pull.probes, pull.last.follow) == (2, 2, False)
    assert agent.stats.model_downloads == agent.stats.runs == 4


class _FakeClient:
    """Records the SUBSCRIBE and UNSUBSCRIBE a ``ModelPull`` sends."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def subscribe(self, topic: str, qos: int = 0) -> None:
        self.sent.append("sub")

    async def unsubscribe(self, topic: str) -> None:
        self.sent.append("unsub")


def _v(version: int, run: str = "r1", rollbacks: int = 0) -> Any:
    return SimpleNamespace(run=run, version=version, rollbacks=rollbacks)


async def test_pull_and_follow_switch_on_the_downloads_each_would_have_cost():
    c = _FakeClient()
    pull = ModelPull(c, "fl/f/model/global/#", downloads=0)  # type: ignore[arg-type]
    await pull.open()  # the session's SUBSCRIBE: v0
    await pull.start_run(1, None, _v(0))  # one download, as following: no evidence
    assert (pull.score, pull.follow, pull.may_probe()) == (0, False, False)
    await pull.open()  # so the first wait holds rather than probes
    await pull.start_run(3, _v(0), _v(1))  # v0 redelivered, then v1: following takes one
    assert (pull.score, pull.follow, pull.subscribed) == (1, True, True)
    await pull.open()  # a wait while following: no second SUBSCRIBE
    await pull.start_run(4, _v(1), _v(2))  # one version, after a wait: pulling would take 2
    assert (pull.score, pull.follow) == (2, True)
    await pull.start_run(7, _v(2), _v(5))  # three versions during one run: a probe takes 1
    assert (pull.score, pull.follow, pull.subscribed) == (0, False, False)
    await pull.open()
    await pull.start_run(8, _v(5), _v(9))  # one download against four versions
    assert (pull.score, pull.may_probe()) == (-3, True)
    await pull.probe()
    await pull.start_run(9, _v(9), _v(15))
    assert pull.score == -CAP  # capped: so one stale probe below does not make it follow
    await pull.probe()  # answered by v15 again, so it subscribes: v15 once more, then v16
    await pull.open()
    await pull.start_run(12, _v(15), _v(16))
    assert (pull.score, pull.follow, pull.may_probe()) == (-2, False, True)
    sub, unsub = "sub", "unsub"
    assert c.sent == [sub, unsub, sub, unsub, sub, unsub, sub, unsub, sub, unsub, sub, unsub]


async def _pulling(downloads: int, start: Any) -> ModelPull:
    """A session that has run on ``start`` and found pulling to pay (score -1)."""
    pull = ModelPull(_FakeClient(), "fl/f/model/global/#", downloads)  # type: ignore[arg-type]
    await pull.open()
    await pull.start_run(downloads + 1, None, start)
    pull.score = -1
    return pull


async def test_models_that_came_during_the_unsubscribe_count_on_both_sides():
    pull = await _pulling(0, _v(3))
    # v4 and v5 arrive while the UNSUBSCRIBE is in flight; the run trains on v5; the
    # probe then brings v6. Following would have taken the same three.
    await pull.probe()
    await pull.start_run(4, _v(5), _v(6))
    assert (pull.score, pull.follow) == (-1, False)


async def test_a_cycle_run_unsubscribed_is_scored_as_pulled_whatever_the_mode():
    pull = await _pulling(0, _v(3))
    await pull.probe()  # v4 three times (republished): the probe's cycle switches to follow
    await pull.start_run(4, _v(3), _v(4))
    assert (pull.score, pull.follow, pull.subscribed) == (1, True, False)
    # The run on v4 was unsubscribed: its wait subscribes (v4 redelivered), then v5.
    # Following would have taken v5 alone, so following gains one.
    await pull.open()
    await pull.start_run(6, _v(4), _v(5))
    assert (pull.score, pull.follow, pull.subscribed) == (2, True, True)


@pytest.mark.parametrize(
    ("trained", "model", "versions"),
    [
        (None, _v(4), 1),  # a session's first run
        (_v(2), _v(7), 5),
        (_v(7), _v(7), 1),  # the same version republished (a later created_at)
        (_v(7), _v(2, run="r2"), 1),  # a new federation
        (_v(7), _v(5, rollbacks=1), 1),  # an announced rollback
    ],
)
def test_versions_since_counts_what_following_would_have_downloaded(trained, model, versions):
    assert versions_since(trained, model) == versions


def test_a_stray_acknowledgement_is_one_debug_line_not_a_traceback(caplog):
    from edge_agent.mqttlog import MQTT_LOG

    with caplog.at_level(logging.DEBUG, logger="fedmq.agent"):
        try:
            {}.pop(64)
        except KeyError:
            MQTT_LOG.exception('Unexpected message ID "%d" in on_unsubscribe callback', 64)
        MQTT_LOG.warning("something else")
    stray, other = caplog.records
    assert (stray.levelname, stray.exc_info) == ("DEBUG", None)
    assert other.levelname == "WARNING"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedmq.agent"):
        MQTT_LOG.error('Unexpected message ID "%d" in on_unsubscribe callback', 65)
    assert not caplog.records
