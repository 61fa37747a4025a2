"""Start an MQTT broker on this machine for development, tests and one-machine demos.

Two kinds behind one small interface, :class:`LocalBroker`:

- :class:`MosquittoBroker` runs the ``mosquitto`` binary (a child process) with the
  ``dev.conf`` template that ships in the wheel (package ``broker_config``).
- :class:`EmbeddedBroker` runs fedmq's own small MQTT 3.1.1 broker
  (:mod:`tools.broker.mqtt_server`) on an event loop of its own in a background thread, for
  machines without Mosquitto; nothing to install.

Neither runs in the caller's event loop, so one blocking interface serves both:
``with choose_broker() as b: b.url``. Asyncio code writes ``async with
EmbeddedBroker(port=0) as b`` (or any kind from :func:`choose_broker`): the blocking
start and stop then run in a worker thread, never in the event loop, and a broker thread
keeps serving while the caller's loop is busy.

The code lives in ``base``, ``mosquitto``, ``embedded`` and the embedded server
(``mqtt_server``: the router; ``mqtt_codec``, ``mqtt_session``, ``mqtt_connection``);
import it from here.

Why our own broker: amqtt 0.12.1 sends a connecting client the retained messages that
match *other* clients' subscriptions (breaking per-fleet isolation) and drops QoS 1
messages queued for offline sessions without a username; iotcore 0.4 (rumqttd) drops
fresh connections under connect/disconnect churn (rumqttd issue #928).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fedmq.errors import ConfigError
from tools.broker.base import LOOPBACK, LocalBroker, accepting
from tools.broker.embedded import EmbeddedBroker
from tools.broker.mosquitto import DEV_CONF, MosquittoBroker, find_mosquitto, render_config

__all__ = [
    "DEV_CONF",
    "LOOPBACK",
    "EmbeddedBroker",
    "LocalBroker",
    "MosquittoBroker",
    "Prefer",
    "accepting",
    "choose_broker",
    "find_mosquitto",
    "render_config",
]

Prefer = Literal["auto", "mosquitto", "embedded"]


def choose_broker(
    prefer: Prefer = "auto", port: int = 0, *, mosquitto_binary: str | Path | None = None
) -> LocalBroker:
    """An unstarted broker: Mosquitto when its binary is found (``auto``), else embedded."""
    if prefer not in ("auto", "mosquitto", "embedded"):
        raise ConfigError(
            "bad_broker_kind", f"broker kind {prefer!r} is not auto|mosquitto|embedded"
        )
    if prefer == "embedded":
        return EmbeddedBroker(port)
    binary = mosquitto_binary or find_mosquitto()
    if prefer == "mosquitto" or binary:
        return MosquittoBroker(port, binary=binary)
    return EmbeddedBroker(port)
