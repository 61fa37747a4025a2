"""Pull on ready: the agent holds the global model's subscription only while it waits.

The broker retains the fleet's current model and delivers it to every new subscription
(MQTT 3.1.1 §3.3.1.3), so a device that subscribes when it is ready to train receives
the newest version at once, and one that unsubscribes while it trains receives none of
the versions published meanwhile: one download per run instead of one per published
version (issue 12, item 4).

Between runs, an agent that has held a model (so the broker retains one) and has found
pulling to pay (below) *probes*: it sends SUBSCRIBE and UNSUBSCRIBE back to back, and
the broker answers with its retained model alone. Otherwise, or when that answer is not
newer than the model just trained on (nothing was published since), or nothing answers,
it holds the subscription (``open``) until a newer model comes, and unsubscribes when
the run starts. The corners, and why each is safe:

- A publish that arrives while an UNSUBSCRIBE is in flight is handled as any other:
  when it is newer, the next run starts from it without subscribing again.
- The probe's answer may be the model just trained on: the agent then subscribes and
  trains on the next publish. The probe's copy and the subscription's copy of that
  model are the downloads a run can waste.
- A model retained before the subscription is delivered by the subscription itself,
  so an agent never waits for a version that was published while it was away.
- A new session starts unsubscribed (clean session: the broker forgot the old one).

When versions are rarer than runs (a small fleet whose FedBuff version needs every
device), those copies would be wasted on most runs, and an agent subscribed
throughout (``follow``, as agents were before) downloads each version once. So each
session keeps a *score* of the downloads each mode saved over the other, one cycle (from
one run's start to the next) at a time, each side counted from what the agent can see:

- ``pull`` (a cycle run unsubscribed): the cycle's downloads, against the versions
  published since the model the last run started on (its version numbers): what
  ``follow`` would have downloaded. A stale probe answer and the redelivered copy
  before the next version score +2; one download for five versions, -4.
- ``follow`` (a cycle run subscribed): one download if a newer model came during the
  run (a probe would have found it), two if the agent had to wait (pulling, which
  starts by holding, would have had the model just trained on redelivered first),
  against the cycle's downloads.

The agent follows while the score is positive and pulls otherwise; it probes only once
pulling has paid (score negative). A new session starts at 0, so its first wait holds
the subscription: with no evidence yet, a probe would cost a small fleet a stale copy
on top of the redelivered one, while a hold costs a busy fleet only a version published
during its round trip, once. That first cycle's count sets the mode. The score is capped
at ±4, so a busy fleet's occasional stale probe (about one cycle in a hundred at 50
devices) does not make it follow, and a mode that stops paying is left after at most
four cycles.

Why not switch on any single wasteful cycle, as before: at 10 devices agents then paid
two stale copies per session (the probe's and the subscription's) before following, and
at 50 a stale probe made an agent follow for a cycle or two that downloaded every
version. What a small fleet's session still pays is the one redelivered copy at its
first wait: MQTT 3.1.1 has no way to subscribe without the retained copy, and a session
keeps no evidence from the one before. The next run starts from the newest model the
agent can know of in either mode, so staleness is the same.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiomqtt

if TYPE_CHECKING:
    from fedmq.wire import GlobalModel


CAP = 4  # downloads of evidence either way that the score keeps (see the module docstring)


def versions_since(trained: GlobalModel | None, model: GlobalModel) -> int:
    """Versions published after ``trained`` up to ``model``: what following would download.

    At least one (``model`` is newer); one across a new run or an announced rollback,
    whose version numbers do not count the publishes between."""
    if trained is None or (trained.run, trained.rollbacks) != (model.run, model.rollbacks):
        return 1
    return max(1, model.version - trained.version)


class ModelPull:
    """The ``model/global`` subscription of one session, opened and closed at most once each
    way (a second ``open`` is not a second SUBSCRIBE, which would redeliver the retained copy)."""

    def __init__(self, client: aiomqtt.Client, topic: str, downloads: int = 0) -> None:
        """``downloads``: the agent's model downloads so far (its cumulative counter)."""
        self.client, self.topic = client, topic
        self.subscribed = False
        self.score = 0  # > 0: following has saved downloads of late; < 0: pulling has
        self._mark = downloads  # at the last run's start
        self._started: GlobalModel | None = None  # the model that run started on
        self._followed = False  # that run kept the subscription (it was following)
        self._waited = False  # since then, the agent waited for a newer model

    @property
    def follow(self) -> bool:
        """Subscribed during runs: while following has saved more than pulling."""
        return self.score > 0

    async def start_run(
        self, downloads: int, trained: GlobalModel | None, model: GlobalModel
    ) -> None:
        """A run on ``model`` starts after one on ``trained`` (``downloads`` so far): score the
        cycle that ends, choose the mode, and unsubscribe to pull.

        The cycle is scored by what it did, not by the mode: one that switched to
        ``follow`` on a probe's answer ran unsubscribed. Following would have downloaded
        every version since the model the last run *started* on: models that came
        during its UNSUBSCRIBE are counted on both sides, though the run trained on the
        newest of them (``trained``, which only a session's first cycle goes by).
        """
        cost = downloads - self._mark
        if self._followed:
            saved = (2 if self._waited else 1) - cost
        else:
            saved = cost - versions_since(self._started or trained, model)
        self.score = max(-CAP, min(CAP, self.score + saved))
        self._mark, self._started, self._waited = downloads, model, False
        if not self.follow:
            await self.close()
        self._followed = self.subscribed

    def may_probe(self) -> bool:
        """Pulling has paid, and unsubscribed: the next model can be asked for by ``probe``."""
        return self.score < 0 and not self.subscribed

    async def probe(self) -> None:
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
        await asyncio.gather(
            self.client.subscribe(self.topic, qos=1), self.client.unsubscribe(self.topic)
        )

    async def open(self) -> None:
        """The agent waits for a newer model: subscribe (the broker then sends its retained
        model) unless subscribed already."""
        self._waited = True
        if not self.subscribed:
            self.subscribed = True
            await self.client.subscribe(self.topic, qos=1)

    async def close(self) -> None:
        """Stop receiving models until the next ``open``."""
        if self.subscribed:
            self.subscribed = False
            await self.client.unsubscribe(self.topic)
