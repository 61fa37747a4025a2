"""The agent's logger for aiomqtt, which keeps a benign message from reading as a crash."""

from __future__ import annotations

import logging

log = logging.getLogger("fedmq.agent")


class _StrayAck(logging.Filter):
    """aiomqtt logs an acknowledgement it has no pending call for with a traceback
    (empicano/aiomqtt#356: concurrent calls on one client), though nothing failed: one
    debug line instead, so a device's log and the demo's output stay readable."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Unexpected message ID"):
            record.levelno, record.levelname, record.exc_info = logging.DEBUG, "DEBUG", None
            return log.isEnabledFor(logging.DEBUG)
        return True


MQTT_LOG = logging.getLogger("fedmq.agent.mqtt")
MQTT_LOG.addFilter(_StrayAck())
