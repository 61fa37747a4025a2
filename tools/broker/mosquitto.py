"""Mosquitto as a child process, configured from a template (the packaged ``dev.conf``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING

import broker_config
from fedmq.errors import BrokerError, ConfigError
from tools.broker.base import LOOPBACK, LocalBroker, accepting

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from typing_extensions import Self

DEV_CONF = broker_config.resource(broker_config.DEV)  # inside the installed package
# Debian and Homebrew put mosquitto in an sbin directory that is often not on PATH.
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")
_PROBE_EVERY_S = 0.02  # how often a starting broker is checked for a listening socket
_LOG_TAIL_LINES = 12


def find_mosquitto() -> str | None:
    """The ``mosquitto`` binary on PATH or in the usual sbin directories, or None."""
    return find_binary("mosquitto")


class MosquittoBroker(LocalBroker):
    """Mosquitto from the ``config`` template (default the packaged ``dev.conf``).

    ``workdir`` holds the generated ``mosquitto.conf``, ``mosquitto.log`` and the
    persistence database. By default it is a new temp dir that :meth:`restart` keeps and
    :meth:`close` removes; a directory you pass is kept.
    """

    kind = "mosquitto"

    def __init__(
        self,
        port: int = 0,
        *,
        config: str | os.PathLike[str] | Traversable = DEV_CONF,
        binary: str | Path | None = None,
        workdir: str | Path | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ):
        super().__init__(port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.binary = _resolve_mosquitto(binary)
        source = Path(config) if isinstance(config, str | os.PathLike) else config
        try:
            self.template = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise BrokerError(
                "bad_config", f"cannot read Mosquitto config {config}: {exc}"
            ) from exc
        # Fail here, not at start, on a template that lacks one of the two per-run lines.
        render_config(self.template, port=1883, persistence_dir=Path(tempfile.gettempdir()))
        self.workdir = Path(workdir) if workdir is not None else None
        self._own_workdir = workdir is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The running broker's process id, or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """The broker's log (stdout and stderr), once it has started."""
        return self.workdir / "mosquitto.log" if self.workdir is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the broker (it saves its database), SIGKILL it if it does not exit."""
        with self._lock:
            self._stop_requested.set()
            proc, self._proc = self._proc, None
            if proc is not None:
                _terminate(proc, self.stop_timeout)
            if self._log is not None:
                self._log.close()
                self._log = None

    def restart(self) -> Self:
        """Stop, then start again on the same port with the same persistence directory."""
        with self._lock:
            self.stop()
            return self.start()

    def close(self) -> None:
        with self._lock:
            self.stop()
            if self.workdir is not None and self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    def _launch(self, port: int) -> int | BrokerError:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="fedmq-mosquitto-"))
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(render_config(self.template, port=port, persistence_dir=self.workdir))
        self._log = (self.workdir / "mosquitto.log").open("ab")  # appended across restarts
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the broker in order
        )
        if self._wait_ready(port):
            return port
        return self._exited_error(f"exited while starting on port {port}")

    def _wait_ready(self, port: int) -> bool:
        """True once the broker accepts connections; False if it exited; raise on timeout."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while not accepting(port):
            try:
                self._proc.wait(timeout=_PROBE_EVERY_S)  # the pause between probes
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(
                        "broker_timeout",
                        f"mosquitto did not accept connections on port {port} "
                        f"within {self.start_timeout} s{self._log_tail()}",
                        port=port,
                    ) from None
            else:
                return False
        return True

    def _exited_error(self, when: str) -> BrokerError:
        status = self._proc.poll() if self._proc is not None else None
        return BrokerError(
            "broker_exited",
            f"mosquitto {when} (exit status {status}){self._log_tail()}",
            port=self._port,
            log=str(self.log_path),
        )

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        tail = "\n  ".join(lines[-_LOG_TAIL_LINES:])
        return f"; {self.log_path} ends:\n  {tail}" if tail else ""


def render_config(template: str, *, port: int, persistence_dir: Path) -> str:
    """``template`` with its ``listener`` and ``persistence_location`` lines set for one run.

    Mosquitto does not expand environment variables, so per-run values are written into
    a generated copy. Running as root adds ``user root``: Mosquitto would otherwise switch
    to the ``mosquitto`` user, which cannot write our private persistence directory.
    """
    values = {
        "listener": f"{port} {LOOPBACK}",
        "persistence_location": f"{persistence_dir}{os.sep}",
    }
    rendered = substitute_lines(template, values)
    if getattr(os, "geteuid", lambda: -1)() == 0:
        rendered += "user root\n"
    return rendered


def substitute_lines(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each line whose first word is a key of ``values`` replaced by
    ``key value``; every key must start exactly one line.

    A value must be one line: a line break would start a directive of its own.
    """
    for key, value in values.items():
        if not value.strip() or value.splitlines() != [value]:
            raise ConfigError("bad_config", f"{key} value {value!r} is empty or spans lines")
    found = dict.fromkeys(values, 0)
    lines = []
    for line in template.splitlines():
        words = line.split()
        key = words[0] if words else ""
        if key in values:
            found[key] += 1
            line = f"{key} {values[key]}"
        lines.append(line)
    wrong = [f"{key} ({count}x)" for key, count in found.items() if count != 1]
    if wrong:
        raise ConfigError(
            "bad_config",
            f"a Mosquitto config template needs exactly one line of each of: {', '.join(wrong)}",
        )
    return "\n".join(lines) + "\n"


def find_binary(name: str) -> str | None:
    """``name`` on PATH or in the usual sbin directories, or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    return shutil.which(name, path=path)


def _resolve_mosquitto(binary: str | Path | None) -> str:
    found = shutil.which(str(binary)) if binary is not None else find_mosquitto()
    if found is None:
        where = f"at {binary}" if binary is not None else "on PATH or in " + ", ".join(SBIN_DIRS)
        raise BrokerError(
            "no_mosquitto",
            f"no mosquitto binary {where}; install it (apt-get install mosquitto) "
            "or use the embedded broker",
        )
    return found


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``timeout`` seconds, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
