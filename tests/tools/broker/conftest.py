"""Raw MQTT clients for the broker tests, closed when each test ends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from rawmqtt import RawClients


@pytest_asyncio.fixture
async def raw() -> AsyncIterator[RawClients]:
    clients = RawClients()
    yield clients
    await clients.aclose()
