"""Which MQTT client id a fedmq service connects with.

The production broker (``use_username_as_clientid true``) replaces every client id with
the client's username, so no one can knock another client off, or take over its
persistent session, by borrowing its id. A service with a username therefore uses that
username as its id itself: its session has the same name on every broker, and the
broker's log names it by what it really is.
"""

from __future__ import annotations


def client_id(username: str | None, default: str) -> str:
    """``username`` when there is one, else ``default`` (anonymous development brokers)."""
    return username if username else default
