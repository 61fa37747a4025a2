"""One client connection of fedmq's broker: what it has to send, and the task that sends it.

Reading and writing are apart so that a client which stops reading never blocks the
reading side: its keepalive deadline still runs, and a writer that makes no progress for
the write timeout closes the connection (Mosquitto, too, drops such a client).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from tools.broker.mqtt_session import Session

log = logging.getLogger(__name__)

CONTROL_LIMIT = 1_000  # acknowledgements waiting to be sent before reading pauses
FLUSH_LIMIT = 64 * 1024  # output still flushed when a connection ends gracefully


class WriteStalled(Exception):
    """No byte of the pending output reached the client within the write timeout."""


class Connection:
    """A client's TCP connection, served by the task that created it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.session: Session | None = None
        self.finished = asyncio.Event()  # set once its will is out and its session detached
        self._control: deque[bytes] = deque()  # CONNACK, acknowledgements, resends
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._pump: asyncio.Task[None] | None = None
        self._timeout: float | None = None  # 1.5 keepalive periods; None: keepalive 0
        self._last_heard = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def client_id(self) -> str:
        return self.session.client_id if self.session is not None else "a client"

    def send(self, data: bytes) -> None:
        """Queue a packet that comes before any queued PUBLISH."""
        self._control.append(data)
        if len(self._control) > CONTROL_LIMIT:
            self._room.clear()
        self._wake.set()

    def wake(self) -> None:
        """The session has something to send."""
        self._wake.set()

    async def room(self) -> None:
        """Wait while too many acknowledgements are unsent: the client is not reading."""
        await self._room.wait()

    def start(self, keepalive: int) -> None:
        """Start writing, and the keepalive watchdog: §3.1.2.10, no packet from the client
        within 1.5 keepalive periods means it is gone; the same bound applies to a write
        that makes no progress."""
        if keepalive:
            self._timeout = keepalive * 1.5
            self.heard()
        self._pump = asyncio.create_task(self._run())

    def heard(self) -> None:
        """A packet came in: the keepalive deadline starts again."""
        loop = asyncio.get_running_loop()
        self._last_heard = loop.time()
        if self._watchdog is None and self._timeout is not None:
            self._watchdog = loop.call_later(self._timeout, self._watch)

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._timeout is not None
        idle = loop.time() - self._last_heard
        if idle < self._timeout:
            self._watchdog = loop.call_later(self._timeout - idle, self._watch)
        else:
            # Closing the transport ends every wait, reading or writing: the reading
            # side sees a lost connection and the will goes out.
            self._watchdog = None
            self.writer.transport.abort()

    def close(self) -> None:
        """Drop the connection now, unsent output and all, and end its task."""
        self.writer.transport.abort()
        self.task.cancel()

    def finish(self, graceful: bool) -> None:
        """Stop writing; flush what is queued in the transport only when ``graceful``."""
        if self._pump is not None:
            self._pump.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        # A graceful close flushes first: only for a little output, or a client that
        # does not read would keep the connection (and its buffer) forever.
        if graceful and self.writer.transport.get_write_buffer_size() <= FLUSH_LIMIT:
            self.writer.close()
        else:
            self.writer.transport.abort()
        self._room.set()

    async def _run(self) -> None:
        try:
            while True:
                data = self._next()
                if data is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self.writer.write(data)
                await self._drain()
        except ConnectionError:
            pass  # the reading side sees the same and ends the connection
        except WriteStalled:
            log.warning("closing %s: it read nothing for %s s", self.client_id, self._timeout)
            self.writer.transport.abort()  # the reading side then ends the connection
        except Exception:
            log.exception("closing %s after an error while writing", self.client_id)
            self.writer.transport.abort()
        finally:
            self._room.set()

    def _next(self) -> bytes | None:
        if self._control:
            data = self._control.popleft()
            if len(self._control) <= CONTROL_LIMIT:
                self._room.set()
            return data
        return self.session.next_packet() if self.session is not None else None

    async def _drain(self) -> None:
        """``drain()``, but a client that takes nothing for the write timeout is dropped."""
        transport = self.writer.transport
        if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
            return  # below the high-water mark: drain() would not wait
        while True:
            before = transport.get_write_buffer_size()
            try:
                await asyncio.wait_for(self.writer.drain(), self._timeout)
                return
            except asyncio.TimeoutError:
                if transport.get_write_buffer_size() >= before:
                    raise WriteStalled from None
