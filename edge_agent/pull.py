"""Pull on ready: the agent holds the global model's subscription only while it waits.

The broker retains the fleet's current model and delivers it to every new subscription
(MQTT 3.1.1 §3.3.1.3), so a device that subscribes when it is ready to train receives
the newest version at once, and one that unsubscribes while it trains receives none of
the versions published meanwhile: one download per run instead of one per published
version (issue 12, item 4).

Between runs, an agent that has held a model (so the broker retains one) *probes*: it
sends SUBSCRIBE and UNSUBSCRIBE back to back, and the broker answers with its retained
model alone. Only when that answer is not newer than the model just trained on (nothing
was published since), or nothing answers, does it hold the subscription (``open``) until
a newer model comes, and unsubscribe when the run starts. The corners, and why each is
safe:

- A publish that arrives while an UNSUBSCRIBE is in flight is handled as any other:
  when it is newer, the next run starts from it without subscribing again.
- The probe's answer may be the model just trained on: the agent then subscribes and
  trains on the next publish. The probe's copy and the subscription's copy of that
  model are the downloads a run can waste.
- A model retained before the subscription is delivered by the subscription itself,
  so an agent never waits for a version that was published while it was away.
- A new session starts unsubscribed (clean session: the broker forgot the old one).

When versions are rarer than runs (a small fleet whose FedBuff version needs every
device), that retained copy would be wasted on most runs. So each session switches
between two modes by the waste it can see: ``pull`` (unsubscribed during runs) and
``follow`` (subscribed throughout, as agents were before).

- In ``pull``, a run that needed more than one download *after its probe or SUBSCRIBE*
  waited past a retained copy that was not new: the agent switches to ``follow``. Models
  delivered while an UNSUBSCRIBE was in flight do not count; under load several arrive
  then, and they say nothing about whether pulling pays.
- In ``follow``, a cycle (from one run's start to the next) with more than one download
  received versions that pulling would have skipped: the agent switches to ``pull``.

Either way the next run starts from the newest model the agent can know of, so
staleness is the same in both.
"""

from __future__ import annotations

import asyncio

import aiomqtt


class ModelPull:
    """The ``model/global`` subscription of one session, opened and closed at most once each
    way (a second ``open`` is not a second SUBSCRIBE, which would redeliver the retained copy)."""

    def __init__(self, client: aiomqtt.Client, topic: str, downloads: int = 0) -> None:
        """``downloads``: the agent's model downloads so far (its cumulative counter)."""
        self.client, self.topic = client, topic
        self.subscribed = False
        self.follow = False
        self._mark = downloads  # at the last run's start
        self._opened_at: int | None = None  # at the SUBSCRIBE, while pulling

    async def start_run(self, downloads: int) -> None:
        """A run starts (``downloads`` so far): choose the mode, and unsubscribe to pull."""
        if self.follow:
            wasted = downloads - self._mark > 1
        else:
            wasted = self._opened_at is not None and downloads - self._opened_at > 1
        if wasted:
            self.follow = not self.follow
        self._mark, self._opened_at = downloads, None
        if not self.follow:
            await self.close()

    def may_probe(self) -> bool:
        """Pulling and unsubscribed: the next model can be asked for by ``probe``."""
        return not self.follow and not self.subscribed

    async def probe(self, downloads: int) -> None:
        """SUBSCRIBE and UNSUBSCRIBE back to back: the broker's retained model, alone.

        The broker starts sending its retained model when it handles the SUBSCRIBE, and
        must complete that delivery after the UNSUBSCRIBE (MQTT 3.1.1 §3.10.4); the two
        packets leave together, so only a version published between them can come too.
        Holding the subscription until the model has been read, as ``open`` does, lets
        every version published during that round trip through: under load, one run in
        six downloaded a second model that way (issue 12, item 4). A broker that drops
        the retained copy instead (§3.10.4 allows it for one not yet started) leaves the
        probe unanswered, and the agent falls back to ``open``.
        """
        self._opened_at = downloads
        await asyncio.gather(
            self.client.subscribe(self.topic, qos=1), self.client.unsubscribe(self.topic)
        )

    async def open(self, downloads: int = 0) -> None:
        """Subscribe (the broker then sends its retained model) unless subscribed already."""
        if not self.subscribed:
            self.subscribed = True
            self._opened_at = downloads
            await self.client.subscribe(self.topic, qos=1)

    async def close(self) -> None:
        """Stop receiving models until the next ``open``."""
        if self.subscribed:
            self.subscribed = False
            await self.client.unsubscribe(self.topic)
