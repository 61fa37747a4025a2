"""What every broker that tools/broker.py starts has in common: :class:`LocalBroker`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from fedmq.errors import BrokerError, ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self

LOOPBACK = "127.0.0.1"
_AUTO_PORT_TRIES = 3  # a free port can be taken before the broker binds it; try again


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at this moment (free, not reserved)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def accepting(port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


class LocalBroker(ABC):
    """A broker this process runs on 127.0.0.1; stop it (or leave its ``with``) when done.

    ``port=0`` picks a free port at the first start; restarts keep it, so clients can
    reconnect to the same URL.
    """

    kind: ClassVar[str]

    def __init__(self, port: int = 0, *, start_timeout: float = 10.0, stop_timeout: float = 5.0):
        if not 0 <= port <= 65535:
            raise ConfigError("bad_port", f"broker port {port} is not in 0..65535")
        self._port = port or None
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._lock = threading.RLock()
        self._stop_requested = threading.Event()

    @property
    def port(self) -> int:
        """The TCP port; known once the broker has started."""
        if self._port is None:
            raise BrokerError("not_started", f"the {self.kind} broker has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``, for ``fedmq.config.BrokerConfig.from_url``."""
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    @abstractmethod
    def running(self) -> bool:
        """True while the broker process is alive."""

    def start(self) -> Self:
        """Start the broker and block until it accepts connections; no-op when running."""
        with self._lock:
            if self.running:
                return self
            self.stop()  # reap a broker that died on its own
            fixed = self._port is not None
            for attempt in range(1 if fixed else _AUTO_PORT_TRIES):
                outcome = self._launch(self._port if fixed else self._auto_port())
                if isinstance(outcome, int):
                    self._port = outcome
                    self._stop_requested.clear()
                    return self
                self.stop()
                if fixed or attempt == _AUTO_PORT_TRIES - 1:
                    raise outcome
            raise AssertionError("unreachable")

    def _auto_port(self) -> int:
        """The port to try when none was given."""
        return free_port()

    @abstractmethod
    def _launch(self, port: int) -> int | BrokerError:
        """Start on ``port``, wait until it accepts connections, and return the port it
        listens on; or the error if it exited while starting."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the broker and block until it has exited; safe to call twice."""

    def close(self) -> None:
        """Stop the broker and remove whatever it kept on disk."""
        self.stop()

    def serve_forever(
        self, on_ready: Callable[[LocalBroker], object] | None = None, check_every: float = 1.0
    ) -> None:
        """Start, call ``on_ready(self)``, and block until Ctrl-C, SIGTERM, :meth:`stop` from
        another thread, or a crash; stop the broker in every case.

        In the main thread SIGTERM raises KeyboardInterrupt from before the start on, so
        ``kill`` or a service manager does not orphan a Mosquitto child.
        """
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
        try:
            self.start()
            if on_ready is not None:
                on_ready(self)
            while not self._stop_requested.wait(check_every):
                if not self.running:
                    raise self._exited_error("exited")
        finally:
            if main:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            self.close()

    def _exited_error(self, when: str) -> BrokerError:
        return BrokerError("broker_exited", f"the {self.kind} broker {when}", port=self._port)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        starting = asyncio.ensure_future(asyncio.to_thread(self.start))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            # A thread cannot be interrupted: let the start finish, then undo it.
            with contextlib.suppress(Exception):
                await starting
            await asyncio.to_thread(self.close)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        state = f"running on {self.url}" if self.running else "stopped"
        return f"<{type(self).__name__} {state}>"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
