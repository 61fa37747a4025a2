"""fedmq's own broker (:mod:`tools.broker.mqtt_server`) on an event loop in a background thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable

from fedmq.errors import BrokerError
from tools.broker.base import LOOPBACK, LocalBroker
from tools.broker.mqtt_server import MqttServer
from tools.broker.mqtt_session import Limits

log = logging.getLogger(__name__)


class EmbeddedBroker(LocalBroker):
    """fedmq's own MQTT 3.1.1 broker (:mod:`tools.broker.mqtt_server`) in a background thread.

    For machines without Mosquitto. Retained messages and persistent sessions live in
    memory until it stops; see :mod:`tools.broker.mqtt_server` for what it does not support.
    The limits are per client, as Mosquitto's: QoS 1/2 messages in flight and queued
    beyond them, QoS 0 messages (and their payload bytes) waiting for a slow reader.
    Dropped messages are logged as one line per ``drop_log_interval`` seconds.
    """

    kind = "embedded"

    def __init__(
        self,
        port: int = 0,
        *,
        max_inflight: int = 100,
        max_queued: int = 10_000,
        max_queued_qos0: int = 1_000,
        max_queued_bytes: int = 16 * 1024 * 1024,
        drop_log_interval: float = 60.0,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ):
        super().__init__(port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._limits = Limits(max_inflight, max_queued, max_queued_qos0, max_queued_bytes)
        self._drop_log_interval = drop_log_interval
        self._thread: threading.Thread | None = None
        self._cancel: Callable[[], object] | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _auto_port(self) -> int:
        return 0  # the server binds port 0 itself and reports the port: no race

    def _launch(self, port: int) -> int | BrokerError:
        listening: concurrent.futures.Future[int] = concurrent.futures.Future()
        broker = MqttServer(
            LOOPBACK, port, limits=self._limits, drop_log_interval=self._drop_log_interval
        )

        async def serve() -> None:
            loop, task = asyncio.get_running_loop(), asyncio.current_task()
            assert task is not None
            self._cancel = lambda: loop.call_soon_threadsafe(task.cancel)
            await broker.serve(ready=listening.set_result)

        def run() -> None:
            try:
                asyncio.run(serve())
            except asyncio.CancelledError:
                pass  # stop() cancelled it
            except BaseException as exc:
                if listening.done():
                    log.exception("the embedded broker on port %s failed", port)
                else:
                    listening.set_exception(exc)

        self._thread = threading.Thread(target=run, name="fedmq-embedded-broker", daemon=True)
        self._thread.start()
        try:
            return listening.result(timeout=self.start_timeout)
        except concurrent.futures.TimeoutError:
            return BrokerError(
                "broker_timeout",
                f"the embedded broker did not listen within {self.start_timeout} s",
            )
        except Exception as exc:
            error = BrokerError("broker_exited", f"the embedded broker did not start: {exc}")
            error.__cause__ = exc
            return error

    def stop(self) -> None:
        """Cancel the broker's task (clients are disconnected) and join its thread."""
        with self._lock:
            self._stop_requested.set()
            thread, cancel, self._thread, self._cancel = self._thread, self._cancel, None, None
            if thread is None:
                return
            if cancel is not None:
                with contextlib.suppress(RuntimeError):  # its loop has already closed
                    cancel()
            thread.join(self.stop_timeout)
            if thread.is_alive():
                log.warning(
                    "the embedded broker thread did not stop within %s s", self.stop_timeout
                )
