"""Topic matching and filter rules of fedmq's own broker (MQTT 3.1.1 §4.7).

Its behaviour on the wire is tested against Mosquitto's in tests/tools/broker/test_broker.py.
"""

from __future__ import annotations

import pytest

from tools.broker.mqtt_server import topic_matches, valid_filter, valid_topic


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("fl/a/updates/+", "fl/a/updates/d1", True),
        ("fl/a/updates/+", "fl/a/updates/d1/x", False),
        ("fl/a/updates/+", "fl/a/updates", False),
        ("fl/a/#", "fl/a", True),  # "#" also matches the parent level
        ("fl/a/#", "fl/a/devices/d1/status", True),
        ("fl/a/#", "fl/b/model/global", False),
        ("fl/+/model/global", "fl/a/model/global", True),
        ("+/+", "/x", True),  # an empty level is a level
        ("#", "fl/a", True),
        ("#", "$SYS/broker/uptime", False),  # §4.7.2
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("fl/a", "fl/a", True),
        ("fl/a", "fl/A", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


@pytest.mark.parametrize(
    ("topic_filter", "valid"),
    [
        ("fl/+/updates/#", True),
        ("#", True),
        ("+", True),
        ("fl/#/x", False),
        ("fl/a#", False),
        ("fl/a+/x", False),
        ("", False),
    ],
)
def test_valid_filter(topic_filter: str, valid: bool) -> None:
    assert valid_filter(topic_filter) is valid


@pytest.mark.parametrize(("topic", "valid"), [("fl/a/x", True), ("fl/+/x", False), ("", False)])
def test_valid_topic(topic: str, valid: bool) -> None:
    assert valid_topic(topic) is valid
