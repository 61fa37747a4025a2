"""Broker provisioning: per-device passwords, and the production config with real paths.

- :func:`add_user` gives a device (or an aggregator, or an observer) of one fleet a fresh
  random password in a Mosquitto password file, through ``mosquitto_passwd``, which
  stores only a salted hash, and its block in the fleet ACL (:mod:`tools.pki.acl`). The
  password is returned to the caller, who shows it once.
- :func:`render_production_config` writes the paths of one installation (or one test
  run) into the packaged ``production.conf``, as :func:`tools.broker.render_config` does
  for ``dev.conf``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import broker_config
from fedmq.errors import BrokerError, ConfigError
from fedmq.topics import validate_device_id, validate_fleet
from tools.broker.mosquitto import SBIN_DIRS, find_binary, substitute_lines
from tools.pki import acl

# Package data, read with importlib.resources: they ship inside the wheel.
PRODUCTION_CONF = broker_config.resource(broker_config.PRODUCTION)
ACL_FILE = broker_config.resource(broker_config.ACL)

PASSWORD_BYTES = 24  # secrets.token_urlsafe(24): 32 characters, 192 random bits
_PASSWD_TIMEOUT_S = 30.0
# Mosquitto started as root reads its password file and ACL only after switching to the
# user of its `user` option, `mosquitto` by default; as root, the files go to that group.
MOSQUITTO_GROUP = "mosquitto"


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
    acl.check_role(role)
    validate_device_id(username)
    if ":" in username:
        # The password file is username:hash, one a line.
        raise ConfigError("bad_username", f"username {username!r} must not contain ':'")
    return username


def add_user(
    password_file: str | Path,
    username: str,
    *,
    fleet: str,
    acl_file: str | Path,
    role: str = "device",
    group: str | None = None,
    force: bool = False,
    binary: str | Path | None = None,
) -> str:
    """Give ``username`` a new random password and the rights of ``role`` in ``fleet``.

    The password goes into ``password_file`` (created when absent) as a salted hash, and
    the user's block into ``acl_file`` (created from ``broker_config/acl`` when absent,
    the user's old block replaced). An existing user is refused unless ``force`` (rotate
    its password, and move it to ``role`` and ``fleet``). Both files are left mode 0600,
    or 0640 with group ``group`` (default: ``mosquitto`` when run as root; see
    :func:`reader_group`). The password goes to ``mosquitto_passwd`` on its standard
    input, never on a command line that other local users could read in ``ps``, and
    nothing else stores it: the caller must show it to the user once.
    """
    check_username(username, role)
    validate_fleet(fleet)
    found = shutil.which(str(binary)) if binary is not None else find_mosquitto_passwd()
    if found is None:
        where = f"at {binary}" if binary is not None else "on PATH or in " + ", ".join(SBIN_DIRS)
        raise BrokerError(
            "no_mosquitto_passwd",
            f"no mosquitto_passwd binary {where}; install Mosquitto (apt-get install mosquitto)",
        )
    gid = reader_group(group)
    acl_path = Path(acl_file)
    new_acl = acl.with_user(_read_acl(acl_path), username, role, fleet)
    path = Path(password_file)
    created = _create_private(path)
    try:
        if not force and username in usernames(path):
            raise ConfigError(
                "user_exists",
                f"{username!r} is already in {path}; pass --force to give it a new password",
            )
        set_access(path, gid)  # before any change: a group we may not give fails here
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        _run_mosquitto_passwd(found, path, username, password)
        set_access(path, gid)  # mosquitto_passwd may have written a new file
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    # Last: should this fail, the user has a password but no rights (denied by default).
    _write_private(acl_path, new_acl, gid)
    return password


def reader_group(group: str | None) -> int | None:
    """The group id that may read the password file and ACL, or None for owner only.

    ``group`` None means: ``mosquitto`` when running as root and that group exists.
    Mosquitto started as root switches to its ``user`` (``mosquitto``) before it reads
    the two files, so root-owned 0600 files would stop it; mode 0640 with that group lets
    it read them and still not change them.
    """
    try:
        import grp
    except ImportError:  # Windows: no groups to give
        if group:
            raise ConfigError("bad_group", "--group needs a POSIX system") from None
        return None
    if group is None:
        if os.geteuid() != 0:
            return None
        with contextlib.suppress(KeyError):
            return grp.getgrnam(MOSQUITTO_GROUP).gr_gid
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError("bad_group", f"no group {group!r} on this system") from None


def set_access(path: Path, gid: int | None) -> None:
    """Mode 0600, or 0640 with group ``gid``: readable by the broker, by no one else."""
    try:
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, 0o600 if gid is None else 0o640)
    except OSError as exc:
        raise ConfigError(
            "bad_group", f"cannot set the group or mode of {path}: {exc.strerror}"
        ) from exc


def describe_access(path: str | Path) -> str:
    """``"mode 0640, group mosquitto"``: who can read ``path``, for the user to check."""
    st = Path(path).stat()
    try:
        import grp

        group = grp.getgrgid(st.st_gid).gr_name
    except (ImportError, KeyError):
        group = str(st.st_gid)
    return f"mode {stat.S_IMODE(st.st_mode):04o}, group {group}"


def _read_acl(path: Path) -> str:
    """The ACL at ``path``, or a new one: broker_config/acl's comments, granting nothing."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("bad_acl", f"cannot read ACL file {path}: {exc}") from exc
    try:
        return ACL_FILE.read_text(encoding="utf-8")
    except OSError:  # an install without broker_config/: the header is only comments
        return ""


def _write_private(path: Path, text: str, gid: int | None) -> None:
    """Replace ``path`` by ``text`` at once: Mosquitto never reads half a file."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise ConfigError("bad_acl", f"cannot write ACL file {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        set_access(Path(tmp), gid)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ConfigError("bad_acl", f"cannot write ACL file {path}: {exc}") from exc
        raise


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
