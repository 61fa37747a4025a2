from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedmq.errors import TopicError
from fedmq.topics import Topics, parse, validate_device_id, validate_fleet

good_ids = st.text(
    st.characters(
        min_codepoint=33,
        max_codepoint=0x2FF,
        exclude_characters="+#/$",
        exclude_categories=("Cc", "Cf", "Zs"),
    ),
    min_size=1,
    max_size=64,
)


def test_topic_names_match_the_design() -> None:
    t = Topics("lab")
    assert t.model_global == "fl/lab/model/global"
    assert t.model_onnx == "fl/lab/model/onnx"
    assert t.update("pi-1") == "fl/lab/updates/pi-1"
    assert t.updates_filter == "fl/lab/updates/+"
    assert t.device_status("pi-1") == "fl/lab/devices/pi-1/status"
    assert t.aggregator_status == "fl/lab/aggregator/status"
    assert t.aggregator_device("pi-1") == "fl/lab/aggregator/devices/pi-1"
    assert t.stats("pi-1") == "fl/lab/stats/pi-1"
    assert Topics().prefix == "fl/default"


@given(good_ids, good_ids)
def test_every_topic_parses_back(fleet: str, device: str) -> None:
    t = Topics(fleet)
    cases = {
        t.model_global: ("model_global", None),
        t.model_onnx: ("model_onnx", None),
        t.update(device): ("update", device),
        t.device_status(device): ("device_status", device),
        t.aggregator_status: ("aggregator_status", None),
        t.aggregator_device(device): ("aggregator_device", device),
        t.stats(device): ("stats", device),
    }
    for topic, (kind, dev) in cases.items():
        parsed = parse(topic)
        assert (parsed.kind, parsed.fleet, parsed.device) == (kind, fleet, dev)


@pytest.mark.parametrize(
    "bad", ["", "a+b", "a#", "a/b", "a\0b", "x" * 65, "has space", "tab\t", "$SYS", 7]
)
def test_bad_device_ids_are_refused_with_a_clear_error(bad: object) -> None:
    with pytest.raises(TopicError) as err:
        validate_device_id(bad)
    assert err.value.reason == "bad_device_id"
    assert "device id" in str(err.value)
    with pytest.raises(TopicError):
        Topics("f").update(bad)  # type: ignore[arg-type]


def test_bad_fleet_is_refused() -> None:
    with pytest.raises(TopicError) as err:
        Topics("a/b")
    assert err.value.reason == "bad_fleet"
    assert validate_fleet("x" * 64) == "x" * 64


@pytest.mark.parametrize(
    "topic",
    [
        "fl/f",
        "x/f/model/global",
        "fl/f/model/other",
        "fl/f/updates",
        "fl/f/updates/a/b",
        "fl/f/updates/+",
        "fl/f/devices/a/state",
        "fl/f/aggregator/devices",
        "fl//updates/a",
    ],
)
def test_non_fedmq_topics_do_not_parse(topic: str) -> None:
    with pytest.raises(TopicError):
        parse(topic)


@given(st.text(max_size=200))
def test_parse_raises_only_topic_error(topic: str) -> None:
    with contextlib.suppress(TopicError):
        parse(topic)
