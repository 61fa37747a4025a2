"""Server learning-rate schedules: a factor of the version that scales the server's step.

FedBuff and FedAvg multiply their server learning rate η_g by ``factor(t)``, FedAsync
its mixing weight α, where ``t`` is the version the step starts from:

- ``constant``:       1
- ``step:E,G[,F]``:   ``max(F, G ** (t // E))``: times G every E versions, down to F
- ``cosine:T[,F]``:   from 1 down to F along half a cosine over T versions, then F
- ``invsqrt:W[,F]``:  1 up to version W, then ``max(F, sqrt(W / t))``

with 0 < G <= 1 and the floor F in [1e-6, 1] (default 0.1). The factor depends on the
version alone, which a checkpoint already holds, so a resumed run continues the schedule
where it was; a re-parameterization for new feature statistics counts as a version
(``Strategy.remap``), so it advances the schedule by one. The floor keeps the factor
from reaching 0: an asynchronous fleet keeps training, and a server that ignored what it
accepted would waste every device's work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedmq.errors import ConfigError
from fedmq.spec import parse_spec

USAGE = "constant, step:E,G[,F], cosine:T[,F] or invsqrt:W[,F] (e.g. cosine:2000,0.1)"
FLOOR = 0.1
MIN_FLOOR = 1e-6  # below it a floor is 0 in all but name (and a subnormal one, exactly 0)
# The numbers after the name each form takes: versions first, then G and F as it has them.
ARITY = {"constant": (0,), "step": (2, 3), "cosine": (1, 2), "invsqrt": (1, 2)}


@dataclass(frozen=True)
class Schedule:
    """``kind`` with its versions ``n`` (E, T or W), step factor ``g`` and ``floor`` F.

    Only the fields its kind has may differ from their defaults, so ``parse(s.spec())``
    is ``s``.
    """

    kind: str = "constant"
    n: int = 1
    g: float = 1.0
    floor: float = FLOOR

    def __post_init__(self) -> None:
        if self.kind not in ARITY:
            raise ConfigError("bad_param", f"unknown server_lr_schedule {self.kind!r}: use {USAGE}")
        if type(self.n) is not int or self.n < 1:
            raise ConfigError("bad_param", "a server_lr_schedule counts versions: E, T, W >= 1")
        if not 0 < self.g <= 1:
            raise ConfigError("bad_param", "server_lr_schedule G must be in (0, 1]")
        if not MIN_FLOOR <= self.floor <= 1:
            raise ConfigError("bad_param", f"server_lr_schedule F must be in [{MIN_FLOOR:g}, 1]")
        unused = self.kind == "constant" and (self.n, self.floor) != (1, FLOOR)
        if unused or (self.kind != "step" and self.g != 1):
            raise ConfigError(
                "bad_param", f"a {self.kind} server_lr_schedule has no such parameter: use {USAGE}"
            )

    def factor(self, version: int) -> float:
        t = max(0, int(version))
        if self.kind == "step":
            return max(self.floor, self.g ** (t // self.n))  # a power that underflows is 0.0
        if self.kind == "cosine":
            done = min(t, self.n) / self.n
            return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * done))
        if self.kind == "invsqrt":
            return 1.0 if t <= self.n else max(self.floor, math.sqrt(self.n / t))
        return 1.0

    @classmethod
    def parse(cls, spec: object) -> Schedule:
        parsed = parse_spec(spec)
        name, nums = (parsed.name, parsed.args) if parsed else ("", ())
        if len(nums) not in ARITY.get(name, ()) or (nums and nums[0] != int(nums[0])):
            raise ConfigError("bad_param", f"bad server_lr_schedule {spec!r}: use {USAGE}")
        if name == "constant":
            return cls()
        n, rest = int(nums[0]), nums[1:]
        if name == "step":
            return cls(name, n, *rest)
        return cls(name, n, floor=rest[0] if rest else FLOOR)

    def spec(self) -> str:
        """Exact (a float's repr): ``parse(s.spec())`` gives the same factors, bit for bit."""
        if self.kind == "constant":
            return "constant"
        g = f"{self.g!r}," if self.kind == "step" else ""
        return f"{self.kind}:{self.n},{g}{self.floor!r}"

    def params(self) -> dict[str, str]:
        """The strategy parameter, absent when constant (as a checkpoint before it had)."""
        return {} if self.kind == "constant" else {"server_lr_schedule": self.spec()}
