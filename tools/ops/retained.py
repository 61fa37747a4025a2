"""Reading retained messages over MQTT, with a definite end.

MQTT has no "end of retained messages" marker. A broker sends the retained messages
that match a subscription while it handles that SUBSCRIBE, before it reads the next
packet from the same client; so once the SUBACK of a *second* subscription is back, every
retained message of the first is already in our queue. Subscribing at QoS 0 keeps the
broker's in-flight window (QoS 1/2 only) from holding any of them back.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence

import aiomqtt

from fedmq.config import BrokerConfig
from fedmq.errors import BrokerError

# A filter no fedmq topic matches; its SUBACK marks the end of the retained messages.
_MARKER = "fl/$fedmq-end-of-retained"


@contextlib.asynccontextmanager
async def connected(broker: BrokerConfig, *, timeout: float) -> AsyncIterator[aiomqtt.Client]:
    """A clean-session client, or one ``BrokerError`` line naming the broker."""
    client = aiomqtt.Client(
        **broker.client_kwargs(),
        identifier=f"fedmq-cli-{uuid.uuid4().hex[:12]}",
        timeout=timeout,
        clean_session=True,
    )
    try:
        await client.__aenter__()
    except (aiomqtt.MqttError, OSError) as exc:
        raise BrokerError(
            "broker_unreachable", f"cannot connect to {broker.url} within {timeout:g}s: {exc}"
        ) from exc
    try:
        yield client
    finally:
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await client.__aexit__(None, None, None)


async def read_retained(
    broker: BrokerConfig, filters: Sequence[str], *, timeout: float = 5.0
) -> dict[str, bytes]:
    """Every retained message matching ``filters``: topic -> payload (empty ones left out)."""
    async with connected(broker, timeout=timeout) as client:
        try:
            for f in filters:
                await client.subscribe(f, qos=0, timeout=timeout)
            await client.subscribe(_MARKER, qos=0, timeout=timeout)
        except aiomqtt.MqttError as exc:
            raise BrokerError(
                "broker_failed", f"{broker.url} refused a subscription: {exc}"
            ) from exc
        found: dict[str, bytes] = {}
        for _ in range(len(client.messages)):
            message = await anext(aiter(client.messages))
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if payload:
                found[str(message.topic)] = payload
        return found


async def follow(
    broker: BrokerConfig, filters: Sequence[str], *, timeout: float = 5.0
) -> AsyncIterator[tuple[str, bytes]]:
    """Every message on ``filters``, retained ones first, until the caller stops."""
    async with connected(broker, timeout=timeout) as client:
        for f in filters:
            await client.subscribe(f, qos=0, timeout=timeout)
        try:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                yield str(message.topic), payload
        except aiomqtt.MqttError as exc:
            raise BrokerError("broker_lost", f"lost {broker.url}: {exc}") from exc
