"""Pull on ready against a real broker: the agent downloads a model when it is ready to train,
not every version published while it trains (issue 12, item 4)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import agent_helpers as h
import pytest

from edge_agent.agent import Agent
from edge_agent.pull import ModelPull
from fedmq.topics import Topics
from fedmq.wire import Update

pytestmark = pytest.mark.broker


async def _updates(observer, topics: Topics, n: int) -> list[Update]:
    return [
        Update.decode(bytes((await h.next_message(observer, topics.updates_filter)).payload))
        for _ in range(n)
    ]


async def test_versions_published_during_a_run_are_not_downloaded(broker, fleet, tmp_path):
    topics = Topics(fleet)
    status = topics.device_status("pi-1")
    async with h.client(broker.url, topics.updates_filter, status) as observer:
        await observer.publish(topics.model_global, h.model(0), qos=1, retain=True)
        stop = asyncio.Event()
        agent = h.agent(broker.url, fleet, tmp_path, compute_delay=0.5)
        task = asyncio.create_task(agent.run(stop))
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
        await observer.publish(topics.model_global, h.model(0), qos=1, retain=True)
        stop = asyncio.Event()
        agent = h.agent(broker.url, fleet, tmp_path)
        task = asyncio.create_task(agent.run(stop))
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
    """Counts how a session asked for models: probes, and subscriptions held."""

    probes = 0
    holds = 0
    held = asyncio.Event()

    async def probe(self, downloads: int) -> None:
        type(self).probes += 1
        await super().probe(downloads)

    async def open(self, downloads: int = 0) -> None:
        if not self.subscribed:
            type(self).holds += 1
            type(self).held.set()
        await super().open(downloads)


class _CountingAgent(Agent):
    pull = _CountingPull


def _counting() -> type[_CountingPull]:
    _CountingPull.probes, _CountingPull.holds, _CountingPull.held = 0, 0, asyncio.Event()
    return _CountingPull


async def test_between_runs_the_agent_probes_for_the_retained_model_alone(broker, fleet, tmp_path):
    topics = Topics(fleet)
    status = topics.device_status("pi-1")
    pull = _counting()
    async with h.client(broker.url, topics.updates_filter, status) as observer:
        await observer.publish(topics.model_global, h.model(0), qos=1, retain=True)
        stop = asyncio.Event()
        cfg = h.agent(broker.url, fleet, tmp_path, compute_delay=0.3).cfg
        agent = _CountingAgent(cfg, h.data())
        task = asyncio.create_task(agent.run(stop))
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
        await observer.publish(topics.model_global, h.model(0), qos=1, retain=True)
        stop = asyncio.Event()
        cfg = h.agent(broker.url, fleet, tmp_path, compute_delay=0.3, timeout=2.0).cfg
        agent = _CountingAgent(cfg, h.data())
        task = asyncio.create_task(agent.run(stop))
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
        await pull.probe(0)
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

    async def open(self, downloads: int = 0) -> None:
        if not self.subscribed:
            type(self).subscribes += 1
        await super().open(downloads)

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
        await observer.publish(topics.model_global, h.model(0), qos=1, retain=True)
        stop = asyncio.Event()
        cfg = h.agent(mosquitto.url, fleet, tmp_path, compute_delay=0.5).cfg
        agent = _RacingAgent(cfg, h.data())
        task = asyncio.create_task(agent.run(stop))
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
        await observer.publish(topics.model_global, h.model(0), qos=1, retain=True)
        stop = asyncio.Event()
        agent = h.agent(b.url, fleet, tmp_path, backoff_base=0.05)
        task = asyncio.create_task(agent.run(stop))
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


async def test_pull_and_follow_switch_on_the_waste_each_can_see(mosquitto, fleet, tmp_path):
    topic = Topics(fleet).model_global
    async with h.client(mosquitto.url) as c:
        pull = ModelPull(c, topic, downloads=0)
        await pull.open(0)
        await pull.start_run(1)  # the retained copy on subscribe was new: keep pulling
        assert (pull.follow, pull.subscribed) == (False, False)
        # Two more models arrived while the UNSUBSCRIBE was in flight (downloads 2 and 3):
        # not the pull's waste, so a new retained copy at the SUBSCRIBE keeps it pulling.
        await pull.open(3)
        await pull.start_run(4)
        assert (pull.follow, pull.subscribed) == (False, False)
        await pull.open(4)
        await pull.start_run(6)  # it waited past a retained copy that was not new
        assert (pull.follow, pull.subscribed) == (True, True)
        await pull.start_run(7)  # one version per run: following costs nothing extra
        assert (pull.follow, pull.subscribed) == (True, True)
        await pull.start_run(10)  # three versions during one run: pulling would take one
        assert (pull.follow, pull.subscribed) == (False, False)
        await pull.open(10)
        # Subscribed once more, the broker answers with its retained model at once.
        await c.publish(topic, h.model(2), qos=1, retain=True)
        assert (await h.next_message(c, topic)).payload == h.model(2)


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
