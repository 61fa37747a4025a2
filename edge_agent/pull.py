"""Pull on ready: the agent holds the global model's subscription only while it waits.

The broker retains the fleet's current model and delivers it to every new subscription
(MQTT 3.1.1 §3.3.1.3), so a device that subscribes when it is ready to train receives
the newest version at once, and one that unsubscribes while it trains receives none of
the versions published meanwhile: one download per run instead of one per published
version (issue 12, item 4). The corners, and why each is safe:

- A publish that arrives while the UNSUBSCRIBE is in flight is handled as any other:
  when it is newer, the next run starts from it without subscribing again.
- The retained copy delivered on subscribe may be the model just trained on (nothing
  was published since): it is not newer, so the agent stays subscribed and trains on
  the next publish. That copy is the one download a run can waste.
- A model retained before the subscription is delivered by the subscription itself,
  so an agent never waits for a version that was published while it was away.
- A new session starts unsubscribed (clean session: the broker forgot the old one).
"""

from __future__ import annotations

import aiomqtt


class ModelPull:
    """The ``model/global`` subscription of one session, opened and closed at most once each
    way (a second ``open`` is not a second SUBSCRIBE, which would redeliver the retained copy)."""

    def __init__(self, client: aiomqtt.Client, topic: str) -> None:
        self.client, self.topic = client, topic
        self.subscribed = False

    async def open(self) -> None:
        """Subscribe (the broker then sends its retained model) unless subscribed already."""
        if not self.subscribed:
            self.subscribed = True
            await self.client.subscribe(self.topic, qos=1)

    async def close(self) -> None:
        """Stop receiving models until the next ``open``."""
        if self.subscribed:
            self.subscribed = False
            await self.client.unsubscribe(self.topic)
