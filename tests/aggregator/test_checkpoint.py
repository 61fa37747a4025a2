"""Strategy checkpoints: exact round trips, identical resumption, and hostile blobs refused."""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.strategies import Contribution, Robust, Strategy, make_strategy
from aggregator.strategies.state import FORMAT_VERSION, decode_checkpoint, encode_checkpoint
from fedmq.errors import ConfigError, UpdateRejected

SHAPES = {"w0": (3, 2), "b0": (2,)}
# Every class and wrapper a checkpoint can hold, with settings small enough that the
# examples reach the interesting states: FedAsync's history trimmed to max_staleness,
# a partial FedBuff buffer or FedAvg round, the norm bound's window past warmup.
SPECS = {
    "fedasync": ("fedasync", {"max_staleness": 2}),
    "fedasync-hinge": ("fedasync", {"staleness": "hinge:0.3,1", "alpha": 0.7}),
    "fedbuff": ("fedbuff", {"k": 3, "max_staleness": 3}),
    "fedavg": ("fedavg", {"clients_per_round": 3}),
    # Schedules read the version alone: a resumed run must continue them, not restart.
    "fedasync-step": ("fedasync", {"server_lr_schedule": "step:2,0.5"}),
    "fedbuff-cosine-momentum": (
        "fedbuff",
        {"k": 2, "server_opt": "momentum", "server_lr_schedule": "cosine:5,0.2"},
    ),
    "fedavg-invsqrt": ("fedavg", {"clients_per_round": 2, "server_lr_schedule": "invsqrt:2"}),
    "fedbuff-momentum": ("fedbuff", {"k": 2, "server_opt": "momentum", "server_beta1": 0.8}),
    "fedbuff-adam": ("fedbuff", {"k": 2, "server_opt": "adam", "server_lr": 0.05}),
    "robust-fedbuff-yogi": (
        "fedbuff",
        {"k": 3, "defence": True, "trim": 0.0, "server_opt": "yogi", "server_lr": 0.05},
    ),
    "robust-trimmed-adam": ("fedbuff", {"k": 4, "defence": True, "server_opt": "adam"}),
    "robust-trimmed": ("fedbuff", {"k": 4, "defence": True}),
    # A trim that cuts among the senders of a coordinate, so sparse and dense differ.
    "robust-trimmed-wide": ("fedbuff", {"k": 5, "defence": True, "trim": 0.4}),
    "robust-fedbuff": ("fedbuff", {"k": 3, "defence": True, "trim": 0.0}),
    "robust-fedasync-clip": ("fedasync", {"defence": True, "norm_mode": "clip"}),
    "robust-fedavg-off": ("fedavg", {"clients_per_round": 2, "defence": True, "norm_mode": "off"}),
}
CKPT = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fresh(spec: str) -> Strategy:
    name, params = SPECS[spec]
    rng = np.random.default_rng(0)
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    return make_strategy(name, weights, 0, **params)


@dataclass(frozen=True)
class Step:
    device: int  # 0 is anonymous (no device id)
    lag: int  # versions behind the current one
    samples: int
    scale: float
    seed: int
    flush: bool
    sparse: bool = False  # a topk-like delta: most coordinates not sent


steps = st.lists(
    st.builds(
        Step,
        st.integers(0, 7),
        st.integers(0, 4),
        st.integers(1, 50),
        st.sampled_from([0.01, 1.0, 30.0]),
        st.integers(0, 2**16),
        st.integers(0, 9).map(lambda n: n == 0),  # a deadline flush one step in ten
        st.booleans(),
    ),
    max_size=25,
)


def drive(s: Strategy, plan: list[Step]) -> list[object]:
    """Apply the plan; the outcome of every step (True/False or the rejection reason)."""
    out: list[object] = []
    for step in plan:
        if step.flush:
            out.append(("flush", s.flush()))
            continue
        rng = np.random.default_rng(step.seed)
        delta = {
            k: (rng.standard_normal(v) * step.scale).astype(np.float32) for k, v in SHAPES.items()
        }
        if step.sparse:
            delta = {k: np.where(rng.random(v.shape) < 0.4, v, 0) for k, v in delta.items()}
        c = Contribution(
            delta=delta,
            base_version=max(0, s.version - step.lag),
            num_samples=step.samples,
            device=f"d{step.device}" if step.device else "",
            sparse=step.sparse,
        )
        try:
            out.append(s.apply(c))
        except UpdateRejected as exc:
            out.append(exc.reason)
    return out


def assert_same(a: Strategy, b: Strategy) -> None:
    assert (a.version, a.pending, a.params()) == (b.version, b.pending, b.params())
    for name, value in a.weights.items():
        assert value.tobytes() == b.weights[name].tobytes()  # bit for bit
    assert encode_checkpoint(a) == encode_checkpoint(b)


@CKPT
@given(spec=st.sampled_from(sorted(SPECS)), plan=steps)
def test_state_round_trips_exactly(spec, plan):
    s = fresh(spec)
    drive(s, plan)
    blob = encode_checkpoint(s)
    back = decode_checkpoint(blob, fresh(spec))
    assert type(back) is type(s)
    if isinstance(s, Robust):
        assert type(back.inner) is type(s.inner)
        assert (back.norm_bound is None) == (s.norm_bound is None)
    assert encode_checkpoint(back) == blob
    assert_same(s, back)


@CKPT
@given(spec=st.sampled_from(sorted(SPECS)), before=steps, after=steps)
def test_a_resumed_strategy_behaves_exactly_as_the_uninterrupted_one(spec, before, after):
    live = fresh(spec)
    drive(live, before)
    resumed = decode_checkpoint(encode_checkpoint(live), fresh(spec))
    assert drive(live, after) == drive(resumed, after)
    assert_same(live, resumed)


def test_fedasync_keeps_its_versions_and_fedbuff_its_buffer():
    fa = fresh("fedasync")
    drive(fa, [Step(1, 0, 5, 1.0, i, False) for i in range(5)])
    back = decode_checkpoint(encode_checkpoint(fa))
    assert list(back._history) == [3, 4, 5]  # max_staleness 2: the current and two before
    fb = fresh("fedbuff")
    drive(fb, [Step(1, 0, 5, 1.0, i, False) for i in range(5)])
    assert decode_checkpoint(encode_checkpoint(fb)).pending == fb.pending == 2


@pytest.mark.parametrize("spec", ["fedbuff-momentum", "fedbuff-adam", "robust-fedbuff-yogi"])
def test_server_optimizer_moments_are_checkpointed_and_change_the_next_step(spec):
    s = fresh(spec)
    drive(s, [Step(1, 0, 5, 1.0, i, False) for i in range(4)])
    inner = s.inner if isinstance(s, Robust) else s
    assert inner.version == (2 if inner.k == 2 else 1)
    assert any(np.any(m != 0) for m in inner.opt.m.values())
    back = decode_checkpoint(encode_checkpoint(s), fresh(spec))
    back_inner = back.inner if isinstance(back, Robust) else back
    for name, m in inner.opt.m.items():
        assert m.tobytes() == back_inner.opt.m[name].tobytes()
    for name, v in inner.opt.v.items():
        assert v.tobytes() == back_inner.opt.v[name].tobytes()
    # Forgetting the moments would change the next version: the state carries weight.
    plan = [Step(1, 0, 5, 1.0, 100 + i, False) for i in range(4)]
    forgetful = decode_checkpoint(encode_checkpoint(s), fresh(spec))
    f_inner = forgetful.inner if isinstance(forgetful, Robust) else forgetful
    f_inner.opt.m = {k: np.zeros_like(m) for k, m in f_inner.opt.m.items()}
    drive(s, plan)
    drive(forgetful, plan)
    assert any(s.weights[k].tobytes() != forgetful.weights[k].tobytes() for k in SHAPES)


def test_a_checkpoint_without_the_moments_is_refused():
    body = msgpack.unpackb(encode_checkpoint(fresh("fedbuff-adam")), raw=False)
    del body["state"]["opt_v"]
    with pytest.raises(ConfigError) as err:
        decode_checkpoint(_pack(body), fresh("fedbuff-adam"))
    assert err.value.reason == "bad_checkpoint"


def _body(spec: str = "robust-trimmed", updates: int = 6) -> dict:
    s = fresh(spec)
    drive(s, [Step(i % 7 + 1, 0, 3, 1.0, i, False) for i in range(updates)])
    return msgpack.unpackb(encode_checkpoint(s), raw=False)


def _pack(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b.update(v=FORMAT_VERSION + 1), "checkpoint_version"),
        (lambda b: b.update(format="something-else"), "bad_checkpoint"),
        (lambda b: b["state"]["inner"].update({"class": "os.system"}), "bad_checkpoint"),
        (lambda b: b["state"]["inner"]["params"].update(k=0), "bad_checkpoint"),
        (lambda b: b["state"]["inner"]["params"].update(bogus=1), "bad_checkpoint"),
        (lambda b: b["state"]["inner"].pop("weights"), "bad_checkpoint"),
        (lambda b: b["state"]["norm_bound"].update(anonymous=-1), "bad_checkpoint"),
        (lambda b: b["state"]["inner"]["buffer"][0].update(samples=0), "bad_checkpoint"),
    ],
)
def test_a_foreign_or_damaged_checkpoint_is_a_clear_config_error(damage, reason):
    body = _body()
    damage(body)
    with pytest.raises(ConfigError) as err:
        decode_checkpoint(_pack(body), fresh("robust-trimmed"))
    assert err.value.reason == reason
    assert err.value.message  # a sentence, not just a code


def test_a_buffered_delta_of_the_wrong_shape_or_values_is_refused():
    body = _body("fedbuff", 4)
    delta = body["state"]["buffer"][0]["delta"]
    delta["w0"] = msgpack.ExtType(1, bytes([1, 1, 2, 0, 0, 0]) + b"\0" * 8)  # shape (2,)
    with pytest.raises(ConfigError, match="names and shapes") as err:
        decode_checkpoint(_pack(body))
    assert err.value.reason == "bad_checkpoint"
    body = _body("fedbuff", 4)
    nan = np.full((3, 2), np.nan, np.float32)
    body["state"]["buffer"][0]["delta"]["w0"] = msgpack.ExtType(
        1, bytes([1, 2, 3, 0, 0, 0, 2, 0, 0, 0]) + nan.tobytes()
    )
    with pytest.raises(ConfigError, match="finite float32"):
        decode_checkpoint(_pack(body))


def test_another_strategy_or_model_is_a_mismatch():
    blob = encode_checkpoint(fresh("fedasync"))
    with pytest.raises(ConfigError) as err:
        decode_checkpoint(blob, fresh("fedbuff"))
    assert err.value.reason == "ledger_mismatch" and "fedasync" in err.value.message
    other = make_strategy("fedasync", {"w0": np.zeros((4, 2), np.float32)})
    with pytest.raises(ConfigError) as err:
        decode_checkpoint(blob, other)
    assert err.value.reason == "ledger_mismatch" and "shapes" in err.value.message


@dataclass(frozen=True)
class _Boom:
    """Unpickling this would create ``marker``."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    blob = pickle.dumps(_Boom(marker))
    with pytest.raises(ConfigError) as err:
        decode_checkpoint(blob)
    assert err.value.reason == "bad_checkpoint"
    assert not marker.exists()
    pickle.loads(blob)  # the blob is live: this is what the old ledger would have run
    assert marker.exists()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_random_bytes_are_a_config_error(blob):
    with pytest.raises(ConfigError):
        decode_checkpoint(blob, fresh("fedasync"))


def _leaves(node: object, path: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))] or [path]
    return [path]


hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.just([]),
    st.just({}),
    st.builds(msgpack.ExtType, st.integers(0, 3), st.binary(max_size=40)),
)


@settings(CKPT, max_examples=300)
@given(spec=st.sampled_from(sorted(SPECS)), pick=st.integers(0, 10**6), value=hostile)
def test_fuzz_a_damaged_field_is_refused_or_gives_a_working_strategy(spec, pick, value):
    s = fresh(spec)
    drive(s, [Step(i % 7 + 1, i % 2, 3, 1.0, i, False) for i in range(9)])
    body = msgpack.unpackb(encode_checkpoint(s), raw=False)
    path = _leaves(body)[pick % len(_leaves(body))]
    node = body
    for key in path[:-1]:
        node = node[key]
    if path:
        node[path[-1]] = value
    try:
        back = decode_checkpoint(_pack(body), fresh(spec))
    except ConfigError:
        return
    drive(back, [Step(1, 0, 3, 1.0, 7, False), Step(2, 1, 3, 1.0, 8, True)])  # still works


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize(("spec", "param"), [("fedbuff", "max_staleness"), ("fedavg", "server_lr")])
def test_a_non_finite_parameter_is_refused(spec, param, value):
    # Found by the fuzz above (CI, 2026-12-04): int(inf) in a constructor raised
    # OverflowError instead of refusing the checkpoint.
    body = msgpack.unpackb(encode_checkpoint(fresh(spec)), raw=False)
    body["state"]["params"][param] = value  # what the strategy is rebuilt from
    with pytest.raises(ConfigError, match="finite"):
        decode_checkpoint(_pack(body), fresh(spec))


@settings(CKPT, max_examples=300)
@given(spec=st.sampled_from(sorted(SPECS)), cut=st.integers(0, 10**6), flip=st.integers(0, 255))
def test_fuzz_truncated_or_flipped_bytes_are_refused_or_work(spec, cut, flip):
    blob = bytearray(encode_checkpoint(fresh(spec)))
    where = cut % len(blob)
    for damaged in (bytes(blob[:where]), bytes(blob[:where] + bytes([flip]) + blob[where + 1 :])):
        try:
            back = decode_checkpoint(damaged, fresh(spec))
        except ConfigError:
            continue
        drive(back, [Step(1, 0, 3, 1.0, 7, False)])


def test_no_pickle_anywhere_in_the_aggregator():
    root = Path(__file__).resolve().parents[2] / "aggregator"
    unpickler = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|shelve|marshal)\b", re.M)
    users = [p for p in root.rglob("*.py") if unpickler.search(p.read_text())]
    assert users == []
