"""Server learning-rate schedules: a factor of the version that scales the server's step.

FedBuff and FedAvg multiply their server learning rate η_g by ``factor(t)``, FedAsync
its mixing weight α, where ``t`` is the version the step starts from:

- ``constant``:       1
- ``step:E,G[,F]``:   ``max(F, G ** (t // E))``: times G every E versions, down to F
- ``cosine:T[,F]``:   from 1 down to F along half a cosine over T versions, then F
- ``invsqrt:W``:      1 up to version W, then ``sqrt(W / t)``

with 0 < G <= 1 and the floor 0 < F <= 1 (default 0.1). The factor depends on the
version alone, which a checkpoint already holds, so a resumed run continues the schedule
where it was. A floor keeps it from reaching 0: an asynchronous fleet keeps training,
and a server that ignored what it accepted would waste every device's work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedmq.errors import ConfigError
from fedmq.spec import parse_spec

USAGE = "constant, step:E,G[,F], cosine:T[,F] or invsqrt:W (e.g. cosine:2000,0.1)"
FLOOR = 0.1
# The numbers after the name each form takes: versions first, then G and F as it has them.
ARITY = {"constant": (0,), "step": (2, 3), "cosine": (1, 2), "invsqrt": (1,)}


@dataclass(frozen=True)
class Schedule:
    """``kind`` with its versions ``n`` (E, T or W), step factor ``g`` and ``floor`` F."""

    kind: str = "constant"
    n: int = 1
    g: float = 1.0
    floor: float = FLOOR

    def __post_init__(self) -> None:
        if self.kind not in ARITY:
            raise ConfigError("bad_param", f"unknown server_lr_schedule {self.kind!r}: use {USAGE}")
        if self.n < 1:
            raise ConfigError("bad_param", "a server_lr_schedule counts versions: E, T, W >= 1")
        for name, x in (("G", self.g), ("F", self.floor)):
            if not 0 < x <= 1:
                raise ConfigError("bad_param", f"server_lr_schedule {name} must be in (0, 1]")

    def factor(self, version: int) -> float:
        t = max(0, int(version))
        if self.kind == "step":
            return max(self.floor, self.g ** (t // self.n))  # a power that underflows is 0.0
        if self.kind == "cosine":
            done = min(t, self.n) / self.n
            return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * done))
        if self.kind == "invsqrt":
            return 1.0 if t <= self.n else math.sqrt(self.n / t)
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
        if self.kind == "invsqrt":
            return f"invsqrt:{self.n}"
        g = f"{self.g!r}," if self.kind == "step" else ""
        return f"{self.kind}:{self.n},{g}{self.floor!r}"

    def params(self) -> dict[str, str]:
        """The strategy parameter, absent when constant (as a checkpoint before it had)."""
        return {} if self.kind == "constant" else {"server_lr_schedule": self.spec()}
