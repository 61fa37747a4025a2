"""The client id of a service: its broker username when it has one."""

from __future__ import annotations

from fedmq.identity import client_id


def test_the_username_is_the_client_id() -> None:
    # The production broker (use_username_as_clientid) would replace any other id.
    assert client_id("pi-001", "fedmq-agent-pi-001") == "pi-001"


def test_without_a_username_the_default_id() -> None:
    # Anonymous development brokers keep one session per device or fleet by this name.
    assert client_id(None, "fedmq-aggregator-farm") == "fedmq-aggregator-farm"
    assert client_id("", "fedmq-agent-pi-001") == "fedmq-agent-pi-001"
