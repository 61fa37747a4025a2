"""Reading retained messages over MQTT: a clean session of the tool's own.

Where the retained messages end is ``fedmq.retained``'s business (shared with the
aggregator's start check); this module connects and follows.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence

import aiomqtt

from fedmq.config import BrokerConfig
from fedmq.errors import BrokerError
from fedmq.retained import collect_retained


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
            found, _ = await collect_retained(client, filters, timeout=timeout)
        except aiomqtt.MqttError as exc:
            raise BrokerError(
                "broker_failed", f"{broker.url} refused a subscription: {exc}"
            ) from exc
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
