"""How a daemon logs: the ``log_level`` setting the agent and the aggregator share.

Declared once here and listed in both services' schemas, so ``--log-level``,
``$FEDMQ_LOG_LEVEL`` and ``log_level = "..."`` mean the same on either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fedmq.settings import check_choices, setting

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


@dataclass(frozen=True)
class LogSettings:
    """Logging."""

    log_level: str = setting(
        "info", help="Least severe messages written to stderr (journald).", choices=LEVELS
    )

    def __post_init__(self) -> None:
        check_choices(self)

    def configure(self) -> None:
        """Route every logger to stderr at ``log_level``; replaces earlier handlers."""
        logging.basicConfig(level=self.log_level.upper(), format=FORMAT, force=True)
