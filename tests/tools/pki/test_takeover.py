"""Client ids bound to usernames: no one takes over another client's connection or session.

Mosquitto, like any MQTT broker, disconnects a client when another one connects with
the same client id, and a clean-session CONNECT with that id discards the first one's
persistent session (the updates queued for an aggregator). With
``use_username_as_clientid true`` in production.conf, the id a client sends is replaced
by its username, so a device can only ever take over itself.

A client knocked off would show it: aiomqtt ends its message stream with MqttError, so
each "still connected" below is a message received after the thief's CONNACK.
"""

from __future__ import annotations

import aiomqtt
import pytest
from provisioned import MARKER, Secure, bounded, seen, until_marker

from fedmq.identity import client_id

pytestmark = pytest.mark.broker


def aggregator_ids(fleet: str) -> list[str]:
    """The id the aggregator uses now (its username), and the one it used before."""
    return [client_id("aggregator", f"fedmq-aggregator-{fleet}"), f"fedmq-aggregator-{fleet}"]


async def test_a_device_cannot_knock_the_aggregator_off(secure: Secure, fleet: str) -> None:
    updates = f"fl/{fleet}/updates/dev-a"
    agg_id = client_id("aggregator", f"fedmq-aggregator-{fleet}")

    async def scenario() -> None:
        async with secure.client("aggregator", identifier=agg_id, clean_session=False) as agg:
            await agg.subscribe(f"fl/{fleet}/updates/+", qos=1)
            for stolen in aggregator_ids(fleet):
                async with secure.client("dev-a", identifier=stolen, clean_session=True) as thief:
                    await thief.publish(updates, MARKER, qos=1)
                assert seen(await until_marker(agg, updates)) == [(updates, MARKER)], stolen

    await bounded(scenario())


async def test_a_device_cannot_take_over_the_aggregators_session(
    secure: Secure, fleet: str
) -> None:
    queued, status = f"fl/{fleet}/updates/dev-b", f"fl/{fleet}/devices/dev-b/status"
    agg_id = client_id("aggregator", f"fedmq-aggregator-{fleet}")

    async def scenario() -> None:
        async with secure.client("aggregator", identifier=agg_id, clean_session=False) as agg:
            await agg.subscribe(f"fl/{fleet}/updates/+", qos=1)
        # The aggregator is away (restarting, say); updates queue in its session.
        async with secure.client("dev-b") as dev:
            await dev.publish(queued, b"before", qos=1)
            for stolen in aggregator_ids(fleet):
                # A clean session under the aggregator's id would discard its session,
                # subscription and queue.
                async with secure.client("dev-a", identifier=stolen, clean_session=True):
                    pass
            await dev.publish(queued, b"after", qos=1)
        async with (
            secure.client("aggregator", identifier=agg_id, clean_session=False) as agg,
            secure.client("dev-b") as dev,
        ):
            # A new subscription: its marker comes after whatever the session had queued.
            await agg.subscribe(f"fl/{fleet}/devices/+/status", qos=1)
            await dev.publish(status, MARKER, qos=1)
            got = seen(await until_marker(agg, status))
            assert got == [(queued, b"before"), (queued, b"after"), (status, MARKER)]

    await bounded(scenario())


async def test_a_device_cannot_knock_another_device_off(secure: Secure, fleet: str) -> None:
    model = f"fl/{fleet}/model/global"

    async def scenario() -> None:
        victim_id = client_id("dev-b", "fedmq-agent-dev-b")
        async with (
            secure.client("aggregator") as agg,
            secure.client("dev-b", identifier=victim_id) as victim,
        ):
            await victim.subscribe(model, qos=1)
            for stolen in (victim_id, "fedmq-agent-dev-b"):
                async with secure.client("dev-a", identifier=stolen):
                    pass
                await agg.publish(model, MARKER, qos=1)
                assert seen(await until_marker(victim, model)) == [(model, MARKER)], stolen

    await bounded(scenario())


async def test_the_broker_names_each_session_by_its_username(secure: Secure, fleet: str) -> None:
    # Two connections of one user are one session: the second knocks the first off.
    # That is the binding working, and why a device's id cannot be anyone else's.
    async def scenario() -> None:
        async with secure.client("dev-a", identifier="first") as first:
            await first.subscribe(f"fl/{fleet}/model/global", qos=1)
            async with secure.client("dev-a", identifier="second"):
                with pytest.raises(aiomqtt.MqttError):
                    await anext(first.messages)

    await bounded(scenario())
