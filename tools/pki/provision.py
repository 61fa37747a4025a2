"""Broker provisioning: per-device passwords, and the production config with real paths.

- :func:`add_user` gives a device (or the aggregator, or an observer) a fresh random
  password in a Mosquitto password file, through ``mosquitto_passwd``, which stores only
  a salted hash. The password is returned to the caller, who shows it once.
- :func:`render_production_config` writes the paths of one installation (or one test
  run) into the packaged ``production.conf``, as :func:`tools.broker.render_config` does
  for ``dev.conf``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import broker_config
from fedmq.errors import BrokerError, ConfigError
from fedmq.topics import validate_device_id
from tools.broker.mosquitto import SBIN_DIRS, find_binary, substitute_lines

# Package data, read with importlib.resources: they ship inside the wheel.
PRODUCTION_CONF = broker_config.resource(broker_config.PRODUCTION)
ACL_FILE = broker_config.resource(broker_config.ACL)

# The ACL (broker_config/acl) grants these roles by username; a device gets the patterns.
ROLES = ("device", "aggregator", "observer")
ROLE_USERNAMES = {"aggregator": "aggregator", "observer": "observer"}
PASSWORD_BYTES = 24  # secrets.token_urlsafe(24): 32 characters, 192 random bits
_PASSWD_TIMEOUT_S = 30.0


def find_mosquitto_passwd() -> str | None:
    """The ``mosquitto_passwd`` binary on PATH or in the usual sbin directories, or None."""
    return find_binary("mosquitto_passwd")


def usernames(password_file: str | Path) -> set[str]:
    """The usernames in a Mosquitto password file (``username:hash`` lines)."""
    try:
        text = Path(password_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            "unreadable", f"cannot read password file {password_file}: {exc}"
        ) from exc
    return {
        line.split(":", 1)[0]
        for line in text.splitlines()
        if line.strip() and not line.startswith("#") and ":" in line
    }


def check_username(username: str, role: str) -> str:
    """``username`` if it may be used for ``role``; a one-line error otherwise."""
    if role not in ROLES:
        raise ConfigError("bad_role", f"role {role!r} is not one of {'|'.join(ROLES)}")
    validate_device_id(username)
    if ":" in username:
        # The password file is username:hash, one a line.
        raise ConfigError("bad_username", f"username {username!r} must not contain ':'")
    expected = ROLE_USERNAMES.get(role)
    if expected is not None and username != expected:
        raise ConfigError(
            "bad_username",
            f"the ACL grants the {role} role to the username {expected!r}, not {username!r}",
        )
    if expected is None and username in ROLE_USERNAMES.values():
        raise ConfigError(
            "reserved_username",
            f"{username!r} is the {username} role's username; pick another device id "
            f"(or pass --role {username})",
        )
    return username


def add_user(
    password_file: str | Path,
    username: str,
    *,
    role: str = "device",
    force: bool = False,
    binary: str | Path | None = None,
) -> str:
    """Give ``username`` a new random password in ``password_file`` and return it.

    The file is created (mode 0600) when absent. An existing user is refused unless
    ``force`` (rotate its password). The password goes to ``mosquitto_passwd`` on its
    standard input, never on a command line that other local users could read in ``ps``,
    and nothing else stores it: the caller must show it to the user once.
    """
    check_username(username, role)
    found = shutil.which(str(binary)) if binary is not None else find_mosquitto_passwd()
    if found is None:
        where = f"at {binary}" if binary is not None else "on PATH or in " + ", ".join(SBIN_DIRS)
        raise BrokerError(
            "no_mosquitto_passwd",
            f"no mosquitto_passwd binary {where}; install Mosquitto (apt-get install mosquitto)",
        )
    path = Path(password_file)
    created = _create_private(path)
    try:
        if not force and username in usernames(path):
            raise ConfigError(
                "user_exists",
                f"{username!r} is already in {path}; pass --force to give it a new password",
            )
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        _run_mosquitto_passwd(found, path, username, password)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return password


def _create_private(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist; True if it was created.

    Created here rather than by ``mosquitto_passwd -c``: -c truncates a file that
    appeared in between, and writes with the umask's mode (often world-readable).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if not path.is_file():
            raise ConfigError("bad_password_file", f"{path} is not a file") from None
        return False
    except OSError as exc:
        raise ConfigError(
            "bad_password_file", f"cannot create password file {path}: {exc.strerror}"
        ) from exc
    os.close(fd)
    return True


def _run_mosquitto_passwd(binary: str, path: Path, username: str, password: str) -> None:
    # Without -b, mosquitto_passwd reads the password and its confirmation from stdin.
    try:
        done = subprocess.run(
            [binary, str(path), username],
            input=f"{password}\n{password}\n",
            capture_output=True,
            text=True,
            timeout=_PASSWD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError("passwd_failed", f"cannot run {binary}: {exc}") from None
    if done.returncode != 0:
        said = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        said = [ln for ln in said if not ln.lower().startswith(("password:", "reenter"))]
        detail = said[-1] if said else f"exit status {done.returncode}"
        raise BrokerError("passwd_failed", f"mosquitto_passwd could not update {path}: {detail}")
    if username not in usernames(path):
        raise BrokerError("passwd_failed", f"mosquitto_passwd did not add {username!r} to {path}")


def render_production_config(
    template: str,
    *,
    cafile: str | Path,
    certfile: str | Path,
    keyfile: str | Path,
    password_file: str | Path,
    acl_file: str | Path | None = None,
    port: int | None = None,
    bind: str | None = None,
    persistence_dir: str | Path | None = None,
) -> str:
    """``template`` (``production.conf``) with this installation's paths.

    ``port`` (and ``bind``, an address) replace the ``listener`` line, and
    ``persistence_dir`` the ``persistence_location``; left out, they stay as written,
    e.g. for :class:`tools.broker.MosquittoBroker`, which sets both for each run. Paths
    must not contain whitespace: Mosquitto splits its lines on it. ``acl_file`` defaults
    to the packaged ``acl``, which Mosquitto reads in place.
    """
    paths = {
        "cafile": cafile,
        "certfile": certfile,
        "keyfile": keyfile,
        "password_file": password_file,
        "acl_file": broker_config.file_path(broker_config.ACL) if acl_file is None else acl_file,
    }
    values: dict[str, str] = {}
    for key, value in paths.items():
        text = str(Path(value).resolve())
        if any(ch.isspace() for ch in text):
            raise ConfigError("bad_config", f"{key} path {text!r} contains whitespace")
        values[key] = text
    if port is not None:
        if not 0 < port <= 65535:
            raise ConfigError("bad_port", f"listener port {port} is not in 1..65535")
        values["listener"] = f"{port} {bind}" if bind else str(port)
    elif bind is not None:
        raise ConfigError("bad_config", "a bind address needs a port")
    if persistence_dir is not None:
        values["persistence_location"] = f"{Path(persistence_dir).resolve()}{os.sep}"
    return substitute_lines(template, values)
