"""Server optimizers: the Reddi et al. 2021 updates, composed into FedBuff."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.strategies import Contribution, ModelGate, make_strategy
from aggregator.strategies.serveropt import ServerOptimizer
from fedmq.errors import ConfigError, UpdateRejected

W = {"w": np.zeros(3, np.float32)}


def steps(opt: str, grads: list[np.ndarray], **kw: float) -> np.ndarray:
    o = ServerOptimizer(W, opt, **kw)
    x = dict(W)
    for g in grads:
        x, moments = o.candidate(x, {"w": g.astype(np.float32)})
        o.commit(moments)
    return x["w"]


def test_momentum_accumulates_the_pseudo_gradient():
    g = np.array([1.0, -2.0, 0.5])
    # m1 = g, m2 = 0.5 g + g; x = lr * (m1 + m2) = 2.5 g * lr
    np.testing.assert_allclose(steps("momentum", [g, g], lr=0.1, beta1=0.5), 0.25 * g, rtol=1e-6)


@pytest.mark.parametrize("opt", ["adam", "yogi"])
def test_adaptive_steps_follow_reddi_et_al(opt):
    g = np.array([1.0, -2.0, 0.01])
    b1, b2, tau, lr = 0.9, 0.99, 1e-3, 0.01
    m = (1 - b1) * g
    v0 = tau**2
    v = b2 * v0 + (1 - b2) * g**2 if opt == "adam" else v0 - (1 - b2) * g**2 * np.sign(v0 - g**2)
    want = lr * m / (np.sqrt(v) + tau)
    got = steps(opt, [g], lr=lr, beta1=b1, beta2=b2, tau=tau)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_none_is_plain_fedbuff():
    a = make_strategy("fedbuff", W, k=1, server_lr=0.5)
    b = make_strategy("fedbuff", W, k=1, server_lr=0.5, server_opt="none")
    for s in (a, b):
        s.apply(Contribution({"w": np.ones(3, np.float32)}, 0, 1))
    assert a.weights["w"].tobytes() == b.weights["w"].tobytes()
    np.testing.assert_array_equal(a.weights["w"], np.full(3, 0.5, np.float32))


def test_a_refused_candidate_leaves_the_moments_as_they_were():
    s = make_strategy("fedbuff", W, k=1, server_opt="momentum")
    s.apply(Contribution({"w": np.ones(3, np.float32)}, 0, 1))
    before = s.opt.m["w"].copy()
    s.gate = ModelGate(max_weight=2.5)
    with pytest.raises(UpdateRejected):
        s.apply(Contribution({"w": np.full(3, 5.0, np.float32)}, 1, 1))
    np.testing.assert_array_equal(s.opt.m["w"], before)


@pytest.mark.parametrize(
    "kw",
    [{"server_opt": "sgd"}, {"server_opt": "adam", "server_beta1": 1.0}, {"server_tau": 0.0}],
)
def test_bad_settings_are_a_config_error(kw):
    with pytest.raises(ConfigError):
        make_strategy("fedbuff", W, **kw)


def test_server_opt_applies_to_fedbuff_only():
    with pytest.raises(ConfigError):
        make_strategy("fedasync", W, server_opt="adam")
