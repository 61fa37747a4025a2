"""The one interface every server strategy implements.

A strategy is pure: it holds the global weights, the version and its own buffers,
and ``apply`` decides what an update does to them. No I/O, no clocks; the asyncio
service (or the simulator) that feeds it lives elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedmq.errors import UpdateRejected
from fedmq.model import Weights, copy_weights

if TYPE_CHECKING:
    from aggregator.strategies.gate import ModelGate
    from aggregator.strategies.state import StateReader


def quiet() -> np.errstate:
    """Float overflow as values, not warnings: a hostile delta of 1e30 would otherwise log
    a RuntimeWarning per operation, and the gate refuses the non-finite result anyway."""
    return np.errstate(over="ignore", invalid="ignore")


# FedBuff's and FedAvg's server learning rate η_g: at most this (1.0 is plain averaging).
MAX_SERVER_LR = 100.0


@dataclass(frozen=True)
class Contribution:
    """What a strategy sees of one device update: a float32 delta against ``base_version``.

    ``sent_norm``: the L2 norm of the delta as the device sent it, when the intake has
    re-expressed it for a newer standardization (None: ``delta`` is as sent). A DP
    policy bounds what the device sent, so the policy's norm bound checks this one.
    ``sparse``: the device sent only some coordinates (topk); a 0 in ``delta`` is one it
    did not send, which a coordinate-wise trimmed mean must not count as a vote for 0.
    """

    delta: Mapping[str, np.ndarray]
    base_version: int
    num_samples: int
    device: str = ""
    seq: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    sent_norm: float | None = None
    sparse: bool = False


class Strategy(ABC):
    """Holds the global model and turns contributions into new versions.

    A ``gate`` (``aggregator.strategies.gate.ModelGate``), when installed, sees every
    candidate model before it becomes the global one and may refuse it
    (``UpdateRejected("model_rejected")``): the weights and version then stay the last
    good ones and whatever was pending (a buffer, a round) is discarded with the update
    that completed it, since they produced the bad candidate together.
    """

    name: ClassVar[str]
    # The class as a checkpoint names it (``name`` is shared by FedBuff and its variants).
    state_name: ClassVar[str]
    gate: ModelGate | None = None

    def __init__(self, weights: Mapping[str, np.ndarray], version: int = 0) -> None:
        self._weights = copy_weights(weights)
        self._version = int(version)

    @property
    def weights(self) -> Weights:
        """The current global weights (do not mutate)."""
        return self._weights

    @property
    def version(self) -> int:
        return self._version

    def staleness(self, c: Contribution) -> int:
        """Versions published since the device's base; a base from the future is refused."""
        tau = self._version - c.base_version
        if tau < 0:
            raise UpdateRejected(
                "future_version",
                f"base_version {c.base_version} is newer than the global version {self._version}",
                device=c.device,
                staleness=tau,
            )
        return tau

    @abstractmethod
    def apply(self, c: Contribution) -> bool:
        """Take one contribution; return True when it produced a new global version.

        Raises ``UpdateRejected`` (with a reason code) when the update is refused;
        a refused update leaves weights, version and buffers exactly as they were.
        """

    def flush(self) -> bool:
        """Close whatever is pending (a round's deadline, a partial buffer).

        Returns True when that produced a new version. The default has nothing pending.
        """
        return False

    def discard_pending(self) -> None:  # noqa: B027 (nothing pending by default)
        """Drop whatever is pending, as a candidate the gate refused does.

        The ledger's ``discard`` event replays a refusal with this, so a restart ends
        in exactly the state the refusal left.
        """

    @property
    def pending(self) -> int:
        """Contributions accepted but not yet folded into a version."""
        return 0

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The strategy's parameters, as published in ``AggregatorStatus``."""

    def init_params(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this strategy exactly (default: ``params()``)."""
        return self.params()

    def state(self) -> dict[str, Any]:
        """Everything that decides what the next update does, as msgpack-able data.

        Scalars, strings, lists and maps, plus float32 arrays (which a checkpoint stores
        in the wire format's tensor encoding). ``from_state`` inverts it bit for bit.
        """
        return {
            "class": self.state_name,
            "params": self.init_params(),
            "version": self._version,
            "weights": self._weights,
            **self._buffers(),
        }

    @classmethod
    def from_state(cls, s: StateReader) -> Strategy:
        """The strategy ``state()`` described; a bad state raises ConfigError."""
        strategy = cls(s.tensors("weights"), s.integer("version"), **s.params("params"))
        strategy._load_buffers(s)
        return strategy

    def _buffers(self) -> dict[str, Any]:
        """What ``state()`` holds beyond parameters, version and weights."""
        return {}

    def _load_buffers(self, s: StateReader) -> None:  # noqa: B027 (an optional hook)
        """Restore what ``_buffers()`` saved."""

    def remap(self, fn: Callable[[Mapping[str, np.ndarray]], Weights]) -> None:
        """Rewrite the weights and every pending delta through ``fn``, as one new version.

        ``fn`` must be linear in the tensors (the re-parameterization for new feature
        statistics is), so that a delta mapped by it is the mapped weights' delta. The
        version counts: the function is the same, the numbers devices hold are not.
        """
        self._weights = fn(self._weights)
        self._remap_buffers(fn)
        self._version += 1

    def _remap_buffers(self, fn: Callable[[Mapping[str, np.ndarray]], Weights]) -> None:  # noqa: B027
        """Map what is pending through ``fn`` (see ``remap``)."""

    def set_online(self, online: int | None) -> None:  # noqa: B027 (an optional hook)
        """How many devices are online now (None: unknown); FedBuff sizes its buffer by it."""

    def set_dp(self, clip: float, noise: float) -> bool:
        """The fleet's DP policy (clip C, noise z; clip 0: none), which a norm bound follows.

        Returns whether that changed how updates are screened (never, by default).
        """
        return False

    def _publish(self, weights: Weights) -> None:
        """Make ``weights`` the new version, unless the gate refuses them (then nothing changes)."""
        if self.gate is not None:
            self.gate.check(weights, version=self._version + 1)
        self._weights = weights
        self._version += 1
