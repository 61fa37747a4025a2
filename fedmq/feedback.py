"""Error feedback for lossy update encodings (Seide et al. 2014; Karimireddy et al. 2019).

A device that sends its delta as f16 or q8 loses the rounding error; with topk:F it
also drops every coordinate outside the top F fraction. Kept as a residual and added to
the next delta before it is encoded, that loss is sent later instead of lost, so it does
not accumulate over rounds: what the aggregator has received in total stays within one
update's loss of what the device meant to send (Stich et al. 2018 for top-k).

Memory is one float32 copy of the model per device; it is held in memory only (a
restarted device starts with no residual, which costs one round's loss).

Under a DP policy the aggregator bounds each update's norm by what clipping and noise
can produce (``aggregator/strategies/dpbound.py``); a residual on top could exceed that
and get an honest update refused. So with ``bounded`` the update carries at most the
norm of the delta it is sent for, and the excess waits in the residual (post-processing
of the noised delta: the privacy accounting is unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedmq.model import Weights
from fedmq.wire import Update


class ErrorFeedback:
    """Encodes deltas as updates, carrying each encoding's loss into the next one."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.residual: Weights = {}

    def encode(
        self,
        delta: Mapping[str, np.ndarray],
        *,
        encoding: str,
        bounded: bool = False,
        **fields: Any,
    ) -> Update:
        """``Update.from_delta`` of ``delta`` plus the residual; the new residual is kept.

        ``bounded``: the update's norm stays within ``delta``'s (a DP policy is on)."""
        if not self.enabled or encoding == "f32":  # f32 of a float32 delta is exact
            return Update.from_delta(delta, encoding=encoding, **fields)
        meant = {
            k: (np.asarray(v, np.float32) + self.residual[k]).astype(np.float32)
            if k in self.residual and self.residual[k].shape == np.shape(v)
            else np.asarray(v, np.float32)
            for k, v in delta.items()
        }
        carried = meant
        if bounded:
            scale = min(1.0, _norm(delta) / max(_norm(meant), 1e-30))
            carried = {k: (v * np.float32(scale)).astype(np.float32) for k, v in meant.items()}
        update = Update.from_delta(carried, encoding=encoding, **fields)
        sent = update.dense_delta()
        self.residual = {k: (meant[k] - sent[k]).astype(np.float32) for k in meant}
        return update


def _norm(tensors: Mapping[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in tensors.values())))
