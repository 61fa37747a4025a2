"""Reading retained messages on a connected MQTT client, with a definite end.

MQTT has no "end of retained messages" marker. A broker sends the retained messages
that match a subscription while it handles that SUBSCRIBE, before it reads the next
packet from the same client; so once the SUBACK of a *second* subscription is back, every
retained message of the first is already in our queue. Subscribing at QoS 0 keeps the
broker's in-flight window (QoS 1/2 only) from holding any of them back.

Shared by the fleet tools (``tools.ops.retained``, a clean session of their own) and
the aggregator's start check, which must read on its own persistent session: with
``use_username_as_clientid`` a second connection of its user would take that session
over, and a clean one would discard the updates queued in it.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiomqtt

# A filter no fedmq topic matches; its SUBACK marks the end of the retained messages.
MARKER = "fl/$fedmq-end-of-retained"


async def collect_retained(
    client: aiomqtt.Client, filters: Sequence[str], *, timeout: float
) -> tuple[dict[str, bytes], list[aiomqtt.Message]]:
    """The retained messages matching ``filters`` (topic -> payload, empty ones left out),
    and every other message that arrived meanwhile, in order, for the caller to handle.

    The subscriptions stay; a persistent session unsubscribes with :func:`forget`.
    """
    for f in filters:
        await client.subscribe(f, qos=0, timeout=timeout)
    await client.subscribe(MARKER, qos=0, timeout=timeout)
    found: dict[str, bytes] = {}
    others: list[aiomqtt.Message] = []
    for _ in range(len(client.messages)):
        message = await anext(aiter(client.messages))
        if not any(message.topic.matches(f) for f in filters):
            others.append(message)
            continue
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if payload:
            found[str(message.topic)] = payload
    return found, others


async def forget(client: aiomqtt.Client, filters: Sequence[str], *, timeout: float) -> None:
    """Undo :func:`collect_retained`'s subscriptions (on a persistent session)."""
    for f in (*filters, MARKER):
        await client.unsubscribe(f, timeout=timeout)
