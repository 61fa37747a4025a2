"""Client-level differential privacy: what each device has spent, with an RDP accountant.

Each accepted update is one Gaussian mechanism on its device's data: the device clips
its delta to norm C and adds noise of standard deviation z·C, so the mechanism's noise
multiplier is z. A device's updates compose; no sampling amplification is claimed, since
a device takes part whenever it likes. Feature statistics published with noise (own
multiplier) are further mechanisms in the same budget. ε is for ``delta`` (δ), computed
by Google's dp-accounting (Mironov 2017, Rényi DP), and the fleet's ε is the largest
device's: the guarantee each device's data gets is its own.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache

from fedmq.errors import ConfigError


@lru_cache(maxsize=4096)
def epsilon(noise_multipliers: tuple[tuple[float, int], ...], delta: float) -> float:
    """ε after composing ``count`` Gaussian mechanisms of each ``z`` (inf if any z is 0)."""
    try:
        import dp_accounting
        from dp_accounting.rdp import RdpAccountant
    except ImportError as exc:  # the aggregator extra brings it; devices never need it
        raise ConfigError(
            "missing_dependency",
            "DP accounting needs dp-accounting: pip install 'fedmq[aggregator]'",
        ) from exc
    if any(z <= 0 for z, n in noise_multipliers if n):
        return math.inf
    accountant = RdpAccountant()
    for z, n in noise_multipliers:
        if n:
            accountant.compose(dp_accounting.GaussianDpEvent(z), n)
    return float(accountant.get_epsilon(delta))


class PrivacyLedger:
    """Counts each device's Gaussian mechanisms and reports ε per device and for the fleet."""

    def __init__(self, delta: float = 1e-5) -> None:
        if not 0 < delta < 1:
            raise ConfigError("bad_setting", f"dp_delta must be in (0, 1), got {delta}")
        self.delta = float(delta)
        self._spent: dict[str, Counter[float]] = {}

    def spend(self, device: str, noise_multiplier: float, count: int = 1) -> None:
        if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
            raise ConfigError(
                "bad_setting", f"noise multiplier must be >= 0, got {noise_multiplier}"
            )
        self._spent.setdefault(device, Counter())[float(noise_multiplier)] += count

    def epsilon(self, device: str) -> float | None:
        """ε spent by ``device`` (None: nothing spent; inf: something sent without noise)."""
        spent = self._spent.get(device)
        if not spent:
            return None
        return epsilon(tuple(sorted(spent.items())), self.delta)

    def fleet_epsilon(self) -> float | None:
        values = [e for d in self._spent if (e := self.epsilon(d)) is not None]
        return max(values) if values else None

    def state(self) -> dict[str, dict[str, int]]:
        """Plain data for the ledger: device -> {z as text: count}."""
        return {d: {repr(z): n for z, n in c.items()} for d, c in self._spent.items()}

    def load(self, state: dict[str, dict[str, int]]) -> None:
        self._spent = {
            d: Counter({float(z): int(n) for z, n in c.items()}) for d, c in state.items()
        }
