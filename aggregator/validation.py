"""Everything an update must pass before a strategy sees it.

Order matters: the topic names the sender (the broker's ACL guarantees it), so the
identity check comes right after decoding; dedupe by (device, seq) comes before the
strategy so a redelivered or replayed update is never applied twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aggregator.strategies import Contribution
from fedmq.errors import TopicError, UpdateRejected, WireError
from fedmq.model import Arch
from fedmq.topics import Topics, parse
from fedmq.wire import Update


@dataclass
class Validator:
    """Turns (topic, payload) into a Contribution or raises UpdateRejected with a reason."""

    topics: Topics
    arch: Arch
    max_bytes: int = 8 * 1024 * 1024
    last_seq: dict[str, int] = field(default_factory=dict)

    def check(self, topic: str, payload: bytes) -> tuple[Update, Contribution]:
        try:
            where = parse(topic)
        except TopicError as exc:
            raise UpdateRejected("bad_topic", str(exc)) from exc
        if where.kind != "update" or where.fleet != self.topics.fleet or where.device is None:
            raise UpdateRejected("bad_topic", f"{topic!r} is not an update topic of this fleet")
        device = where.device
        try:
            update = Update.decode(
                payload, shapes=self.arch.param_shapes(), max_bytes=self.max_bytes
            )
        except WireError as exc:
            raise UpdateRejected(exc.reason, str(exc), device=device) from exc
        if update.device != device:
            raise UpdateRejected(
                "identity_mismatch",
                f"payload claims device {update.device!r} but arrived on {device!r}'s topic",
                device=device,
            )
        last = self.last_seq.get(device, -1)
        if update.seq <= last:
            reason = "duplicate_seq" if update.seq == last else "old_seq"
            raise UpdateRejected(
                reason, f"seq {update.seq} from {device} is not after {last}", device=device
            )
        return update, to_contribution(update)

    def seen(self, device: str, seq: int) -> None:
        """Record that (device, seq) was handled, applied or refused by the strategy."""
        self.last_seq[device] = max(seq, self.last_seq.get(device, -1))


def to_contribution(update: Update) -> Contribution:
    """What a strategy sees of a decoded update."""
    return Contribution(
        delta=update.dense_delta(),
        base_version=update.base_version,
        num_samples=update.num_samples,
        device=update.device,
        seq=update.seq,
        metrics=dict(update.metrics),
        sparse=update.encoding == "topk",
    )
