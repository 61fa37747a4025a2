"""The norm bound a fleet's DP policy implies, in place of the empirical median.

Under a client-level DP policy (clip C, noise multiplier z) an honest device sends
``c + n`` with ``‖c‖ ≤ C`` (its clipped delta) and ``n ~ N(0, (zC)² I_d)`` over the
model's ``d`` parameters (a topk update sends fewer, never a larger norm). Its norm
is about ``C·sqrt(1 + z²d)``: mostly noise, ten times or more what the median of
unnoised deltas would be, and the same for every device, so the median carries no
information about who is honest. The bound is the
policy's own instead. By the triangle inequality ``‖c + n‖ ≤ C + ‖n‖``, and
``‖n‖² / (zC)²`` is chi-square with ``d`` degrees of freedom, whose tail Laurent and
Massart (2000, Lemma 1) bound without any table: ``P(χ²_d ≥ d + 2·sqrt(d·x) + 2x) ≤ e^-x``.
With ``x = ln(1/p)`` an honest update exceeds

    C · (1 + z · sqrt(d + 2·sqrt(d·x) + 2x))

with probability at most ``p`` (1e-6), at any ``d`` and whatever its clipped part. The
bound is that times ``1 + ENCODING_SLACK``, so f16/q8 rounding never pushes an honest
update over it; the error-feedback residual a device adds before encoding could (topk's
is every unsent coordinate), so under a policy ``fedmq.feedback`` holds an update to
the norm of the delta it carries. With z = 0 (clipping only) it is C itself, with the same slack.

What it cannot do: an attacker may send anything up to the bound, which is the honest
noise's size. A direction of that norm moves the model no further than one honest
noised update, and FedBuff's trimmed mean cuts the extremes per coordinate after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedmq.errors import ConfigError

# An honest device is refused by the bound with at most this probability per update.
HONEST_TAIL = 1e-6
# Relative room for the wire's rounding: q8 errs by at most half a step of max|v|/127
# per coordinate, a couple of percent of a noised delta's norm; f16 and f32 far less.
ENCODING_SLACK = 0.05


@dataclass(frozen=True)
class DpBound:
    """The bound on an update's L2 norm under the policy (``clip`` C, ``noise`` z)."""

    clip: float
    noise: float = 0.0
    tail: float = HONEST_TAIL

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError("bad_param", f"a DP bound needs clip > 0, got {self.clip}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ConfigError("bad_param", f"DP noise must be >= 0, got {self.noise}")
        if not 0 < self.tail < 1:
            raise ConfigError("bad_param", f"tail must be in (0, 1), got {self.tail}")

    def bound(self, dim: int) -> float:
        """The largest norm an honest update of ``dim`` coordinates reaches (but with ``tail``)."""
        x = math.log(1 / self.tail)
        chi = math.sqrt(dim + 2 * math.sqrt(dim * x) + 2 * x)
        return self.clip * (1 + self.noise * chi) * (1 + ENCODING_SLACK)

    def describe(self) -> str:
        """Why an update was refused, for the rejection's message."""
        return f"the DP policy's bound: clip {self.clip:g}, noise {self.noise:g}"
