"""``arch.schema`` on the wire: round trips, the digest covers it, and any damage to it
is a WireError (docs/wire.md 3.2)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedmq.errors import WireError
from fedmq.model import Arch, init_weights
from fedmq.schema import Schema
from fedmq.training import Hyper
from fedmq.wire import GlobalModel

RUN = "0123456789abcdef"
names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)


@st.composite
def schemas(draw: st.DrawFn) -> Schema:
    pool = draw(st.lists(names, min_size=4, max_size=12, unique=True))
    label, rest = pool[0], pool[1:]
    features = rest[: draw(st.integers(1, len(rest) - 1))]
    if draw(st.booleans()):
        return Schema(tuple(features), label, "regression")
    classes = draw(st.lists(names, min_size=2, max_size=6, unique=True))
    return Schema(tuple(features), label, "classification", tuple(classes))


def _model(schema: Schema) -> GlobalModel:
    if schema.task == "regression":
        arch = Arch("linear", (schema.n_features, 1), schema=schema)
    else:
        arch = Arch("mlp", (schema.n_features, 3, schema.n_outputs), schema=schema)
    return GlobalModel.build(2, arch, init_weights(arch), Hyper(), run=RUN, created_at=1.0)


@given(schemas())
def test_a_schema_arch_round_trips_and_its_digest_differs_from_v1(schema: Schema) -> None:
    model = _model(schema)
    back = GlobalModel.decode(model.encode())
    assert back.arch == model.arch and back.arch.schema == schema
    assert back.encode() == model.encode()
    plain = Arch(model.arch.kind, model.arch.layers, model.arch.activation)
    assert GlobalModel.build(2, plain, model.weights, Hyper(), run=RUN).digest != model.digest


JUNK = st.one_of(
    st.none(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=5),
    st.lists(st.integers(0, 9), max_size=3),
    st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9)),
)  # fmt: skip


@given(schemas(), st.sampled_from(["features", "label", "task", "classes", "extra"]), JUNK)
def test_any_damage_to_the_schema_is_a_wire_error(schema: Schema, key: str, junk) -> None:
    body = msgpack.unpackb(_model(schema).encode(), raw=False)
    body["arch"]["schema"][key] = junk
    try:
        decoded = GlobalModel.decode(msgpack.packb(body, use_bin_type=True))
    except WireError:
        return
    # The one way to pass: the junk equals what was there (a digest covers the rest).
    assert decoded.arch.schema == schema


@pytest.mark.parametrize("junk", [[], "schema", 1, None])
def test_a_schema_that_is_not_a_map_is_bad_type(junk) -> None:
    body = msgpack.unpackb(_model(Schema(("a",), "y", "regression")).encode(), raw=False)
    body["arch"]["schema"] = junk
    with pytest.raises(WireError) as err:
        GlobalModel.decode(msgpack.packb(body, use_bin_type=True))
    assert err.value.reason == "bad_type"
