"""fedmq.spec: the one ``name:a,b`` parser, and that each flag keeps its own error."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.main import parse_arch
from aggregator.strategies.fedasync import Staleness
from fedmq.errors import ConfigError
from fedmq.model import Arch
from fedmq.spec import Spec, parse_spec
from tools.sim.partition import parse_partition
from tools.sim.simulate import DelayModel


@pytest.mark.parametrize(
    ("spec", "number", "tail", "expected"),
    [
        ("iid", float, False, Spec("iid", ())),
        (" poly : 0.5 ", float, False, Spec("poly", (0.5,))),
        ("hinge:1,4", float, False, Spec("hinge", (1.0, 4.0))),
        ("mlp:64,32,10:tanh", int, True, Spec("mlp", (64, 32, 10), "tanh")),
        ("linear:3,1", int, True, Spec("linear", (3, 1))),
        ("poly:", float, False, None),  # an empty argument
        ("hinge:1,,4", float, False, None),
        ("poly:abc", float, False, None),
        ("dirichlet:nan", float, False, None),  # not finite
        ("poly:inf", float, False, None),
        ("shards:1.5", int, False, None),  # number refuses it
        ("mlp:64,10:relu", int, False, None),  # a second ':' without tail
        (None, float, False, None),
        (3, float, False, None),
    ],
)
def test_parse_spec(spec, number, tail, expected) -> None:
    assert parse_spec(spec, number, tail=tail) == expected


names = st.from_regex(r"[A-Za-z0-9_.+-]+", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)


@given(names, st.lists(finite, min_size=1, max_size=5))
def test_written_specs_read_back(name: str, values: list[float]) -> None:
    spec = f"{name}:{','.join(repr(v) for v in values)}"
    assert parse_spec(spec) == Spec(name, tuple(values))


@given(st.text(max_size=40))
def test_any_text_gives_a_spec_of_finite_numbers_or_none(text: str) -> None:
    parsed = parse_spec(text)
    assert parsed is None or all(math.isfinite(v) for v in parsed.args)


def test_the_callers_read_good_specs() -> None:
    assert parse_arch("mlp:4,8,3:tanh") == Arch("mlp", (4, 8, 3), "tanh")
    assert parse_arch("linear:2,1") == Arch("linear", (2, 1), "relu")
    assert parse_partition("shards:2") == ("shards", 2)
    assert str(DelayModel.parse("lognormal:0.05,1")) == "lognormal:0.05,1"
    assert str(Staleness.parse("hinge:1,4")) == "hinge:1,4"


@pytest.mark.parametrize(
    ("parse", "reason", "usage", "bad"),
    [
        (parse_arch, "bad_model", "mlp:64,32,10:relu", ["mlp", "mlp:", "mlp:a,b", "cnn:1,2"]),
        (parse_partition, "bad_partition", "dirichlet:ALPHA", ["iid:", "shards:1e9x"]),
        (DelayModel.parse, "bad_delays", "lognormal:MEDIAN_S", ["constant", "constant:nan"]),
        (Staleness.parse, "bad_staleness", "poly:A", ["poly", "poly:1,2", "hinge:1", "x:1"]),
    ],
)
def test_each_caller_keeps_its_reason_and_usage(parse, reason, usage, bad) -> None:
    for spec in bad:
        with pytest.raises(ConfigError) as info:
            parse(spec)
        assert info.value.reason == reason
        assert usage in str(info.value)
