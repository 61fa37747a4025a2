"""The Mosquitto configs fedmq ships, as package data: ``dev.conf``, ``production.conf``, ``acl``.

They are installed inside the wheel, beside this module, so code reads them through
:mod:`importlib.resources`, never by a path relative to a source checkout.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from fedmq.errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

DEV = "dev.conf"
PRODUCTION = "production.conf"
ACL = "acl"


def resource(name: str) -> Traversable:
    """The packaged file ``name`` (one of :data:`DEV`, :data:`PRODUCTION`, :data:`ACL`)."""
    return files(__name__).joinpath(name)


def file_path(name: str) -> Path:
    """The packaged file ``name`` as a real path, for a Mosquitto line that names a file.

    A wheel installs as plain files, so this is the installed file itself. From a zip
    import there is no file that would outlive the call, so that is an error.
    """
    found = resource(name)
    if isinstance(found, Path) and found.is_file():
        return found
    raise ConfigError(
        "bad_config",
        f"the packaged broker_config/{name} is not a file on disk ({found}); "
        "install fedmq unzipped or pass the file's path",
    )
