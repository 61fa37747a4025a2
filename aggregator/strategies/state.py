"""Strategy checkpoints as explicit, versioned data: msgpack fields plus wire-format tensors.

A checkpoint is one msgpack map::

    {"format": "fedmq-checkpoint", "v": 1, "strategy": NAME, "params": {...},
     "state": Strategy.state()}

Tensors inside are the wire format's ext type 1 (``fedmq.wire.encode_tensor``). Decoding
builds nothing but numbers, strings, lists and float32 arrays, then calls the strategy's
constructor with checked parameters: a damaged or foreign blob is a ``ConfigError``
with a reason code (``bad_checkpoint``, ``checkpoint_version``, ``ledger_mismatch``),
never code execution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import numpy as np

from aggregator.strategies.base import Strategy
from aggregator.strategies.fedasync import FedAsync
from aggregator.strategies.fedavg import FedAvg
from aggregator.strategies.fedbuff import FedBuff
from aggregator.strategies.robust import Robust
from aggregator.strategies.trimmed import TrimmedFedBuff
from fedmq.errors import ConfigError, WireError
from fedmq.model import Weights
from fedmq.tensors import decode_tensor, encode_tensor

FORMAT = "fedmq-checkpoint"
FORMAT_VERSION = 1
CLASSES: dict[str, type[Strategy]] = {
    c.state_name: c for c in (FedAsync, FedBuff, FedAvg, TrimmedFedBuff, Robust)
}
Scalar = bool | int | float | str


def encode_checkpoint(strategy: Strategy) -> bytes:
    """The strategy's complete state as checkpoint bytes."""
    body = {
        "format": FORMAT,
        "v": FORMAT_VERSION,
        "strategy": strategy.name,
        "params": strategy.params(),
        "state": strategy.state(),
    }
    return msgpack.packb(body, use_bin_type=True, default=_tensor)


def _tensor(obj: object) -> object:
    if isinstance(obj, np.ndarray):
        # Deltas and weights are float32 by contract (``Contribution``).
        return encode_tensor(obj.astype(np.float32) if obj.dtype.kind == "f" else obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"a checkpoint cannot hold {type(obj).__name__}")


def decode_checkpoint(blob: bytes, template: Strategy | None = None) -> Strategy:
    """The strategy a checkpoint holds; with ``template``, it must be the same federation."""
    try:
        body = msgpack.unpackb(blob, raw=False, strict_map_key=True, max_bin_len=0)
    except Exception as exc:  # msgpack raises many types for bad bytes; all mean the same
        raise _bad(f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise _bad("not a fedmq checkpoint")
    if body.get("v") != FORMAT_VERSION:
        raise ConfigError(
            "checkpoint_version",
            f"checkpoint format v{body.get('v')!r}; this fedmq reads v{FORMAT_VERSION}",
        )
    name = body.get("strategy")
    if template is not None and name != template.name:
        raise ConfigError(
            "ledger_mismatch", f"the checkpoint holds a {name} federation, not {template.name}"
        )
    strategy = build(StateReader(body.get("state"), "state"))
    if strategy.name != name:
        raise _bad(f"names {name!r} but holds a {strategy.name} strategy")
    if template is not None:
        _same_model(strategy.weights, template.weights)
    return strategy


def build(s: StateReader) -> Strategy:
    """Rebuild the strategy ``s`` describes (``Strategy.from_state`` of its class)."""
    name = s.text("class")
    cls = CLASSES.get(name)
    if cls is None:
        raise s.bad("class", f"names no strategy class ({name!r})")
    try:
        return cls.from_state(s)
    except TypeError as exc:  # parameters the constructor does not take
        raise s.bad("params", f"do not fit {name}: {exc}") from None
    except ConfigError as exc:
        if exc.reason in ("bad_checkpoint", "checkpoint_version"):
            raise
        raise s.bad("params", f"are refused: {exc.message}") from None


def _same_model(saved: Weights, configured: Weights) -> None:
    got = {k: v.shape for k, v in saved.items()}
    want = {k: v.shape for k, v in configured.items()}
    if list(got.items()) != list(want.items()):
        raise ConfigError(
            "ledger_mismatch", f"the checkpoint's model has shapes {got}, the configured {want}"
        )


def _bad(problem: str) -> ConfigError:
    return ConfigError("bad_checkpoint", f"damaged checkpoint: {problem}")


class StateReader:
    """Typed, checked access to one map of a decoded checkpoint; every failure is a ConfigError."""

    def __init__(self, body: object, where: str) -> None:
        if not isinstance(body, dict):
            raise _bad(f"{where} is not a map")
        self.body = body
        self.where = where

    def bad(self, key: str, problem: str) -> ConfigError:
        return _bad(f"{self.where}.{key} {problem}")

    def _get(self, key: str) -> Any:
        if key not in self.body:
            raise self.bad(key, "is missing")
        return self.body[key]

    def integer(self, key: str, lo: int = 0) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.bad(key, f"must be an integer >= {lo}")
        return value

    def number(self, key: str, lo: float = 0.0) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.bad(key, "must be a number")
        if not math.isfinite(value) or value < lo:
            raise self.bad(key, f"must be a finite number >= {lo}")
        return float(value)

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self.bad(key, "must be a string")
        return value

    def params(self, key: str) -> dict[str, Scalar]:
        value = self._get(key)
        # No parameter is infinite or NaN (each strategy refuses those from a config), and
        # a constructor's int() of one would raise OverflowError or ValueError, not refuse.
        if not isinstance(value, dict) or not all(
            isinstance(v, bool | int | str) or (isinstance(v, float) and math.isfinite(v))
            for v in value.values()
        ):
            raise self.bad(key, "must map names to finite numbers or strings")
        return value

    def items(self, key: str, max_len: int) -> list[StateReader]:
        """A list of maps, at most ``max_len`` long."""
        value = self._get(key)
        if not isinstance(value, list) or len(value) > max_len:
            raise self.bad(key, f"must be a list of at most {max_len} entries")
        return [StateReader(v, f"{self.where}.{key}[{i}]") for i, v in enumerate(value)]

    def per_device(
        self, key: str, max_len: int, value: Callable[[StateReader], Any]
    ) -> dict[str, Any]:
        """``[{"device": ..., ...}]`` as device -> ``value(entry)``, each device once."""
        out: dict[str, Any] = {}
        for e in self.items(key, max_len):
            device = e.text("device")
            if device in out:
                raise self.bad(key, f"names {device!r} twice")
            out[device] = value(e)
        return out

    def maybe(self, key: str) -> StateReader | None:
        value = self._get(key)
        return None if value is None else StateReader(value, f"{self.where}.{key}")

    def strategy(self, key: str) -> Strategy:
        return build(StateReader(self._get(key), f"{self.where}.{key}"))

    def tensors(self, key: str, like: Mapping[str, np.ndarray] | None = None) -> Weights:
        """Finite float32 arrays (copies), with the names and shapes of ``like`` if given."""
        value = self._get(key)
        if not isinstance(value, dict) or not value:
            raise self.bad(key, "must be a non-empty map of tensors")
        out: Weights = {}
        for name, ext in value.items():
            try:
                arr = decode_tensor(ext, f"{self.where}.{key}.{name}")
            except WireError as exc:
                raise _bad(exc.message) from None
            if arr.dtype != np.float32 or not np.isfinite(arr).all():
                raise self.bad(f"{key}.{name}", "must be finite float32")
            out[name] = arr.copy()
        if like is not None and [(k, v.shape) for k, v in out.items()] != [
            (k, v.shape) for k, v in like.items()
        ]:
            raise self.bad(key, "does not match the model's names and shapes")
        return out
