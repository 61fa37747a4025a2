"""How long each simulated device takes per local run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmq.errors import ConfigError
from fedmq.spec import parse_spec


@dataclass(frozen=True)
class DelayModel:
    """Per-device compute delays: ``lognormal:MEDIAN_S,SIGMA`` or ``constant:S``."""

    kind: str
    median: float
    sigma: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> DelayModel:
        name, nums, _ = parse_spec(spec) or ("", (), "")
        ok = (name == "lognormal" and len(nums) == 2 and nums[0] > 0 and nums[1] >= 0) or (
            name == "constant" and len(nums) == 1 and nums[0] > 0
        )
        if not ok:
            raise ConfigError(
                "bad_delays",
                f"bad delays {spec!r}: use lognormal:MEDIAN_S,SIGMA (e.g. lognormal:0.05,1.0) "
                "or constant:S with positive numbers",
            )
        return cls(name, *nums)

    def per_device(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "constant":
            return np.full(n, self.median)
        return self.median * np.exp(self.sigma * rng.standard_normal(n))

    def __str__(self) -> str:
        if self.kind == "constant":
            return f"constant:{self.median:g}"
        return f"lognormal:{self.median:g},{self.sigma:g}"
