"""The devices' states as their retained statuses tell them, for the aggregator.

Three readers: the progress line (devices online), ``fedmq_devices{state}`` and
FedBuff's K_eff, which counts only devices that can still send an update.
"""

from __future__ import annotations

from collections import Counter

from fedmq.errors import TopicError, WireError
from fedmq.topics import parse
from fedmq.wire import DeviceStatus

# Device states that count as online for FedBuff's K_eff.
ONLINE = frozenset({"online", "training", "idle"})


def topic_kind(topic: str) -> str | None:
    try:
        return parse(topic).kind
    except TopicError:
        return None


class DeviceStates:
    def __init__(self) -> None:
        self.states: dict[str, str] = {}  # device -> state
        self._online: int | None = None  # as FedBuff's K_eff last heard it

    def note(self, topic: str, payload: bytes) -> int | None:
        """Note a device status; the K_eff online count when it changed, else None."""
        device = parse(topic).device or ""
        try:
            self.states[device] = DeviceStatus.decode(payload).state
        except WireError:  # a cleared or damaged status: the device is not counted
            self.states.pop(device, None)
        online = sum(s in ONLINE for s in self.states.values())
        if online == self._online:
            return None
        self._online = online
        return online

    def counts(self) -> Counter[str]:
        return Counter(self.states.values())

    @property
    def connected(self) -> int:
        """Devices not offline (the progress line's "devices online")."""
        return sum(state != "offline" for state in self.states.values())
