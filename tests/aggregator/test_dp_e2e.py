"""Client-level DP over a real Mosquitto: real agents clip and noise, the aggregator,
with its defences on (the default), accepts their noised updates under the policy's norm
bound and reports ε in its retained status and in each device's retained ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiomqtt
import pytest

from fedmq.config import BrokerConfig
from fedmq.topics import Topics
from fedmq.wire import AggregatorStatus, DeviceLedger


async def first(url: str, topic: str, ok: Callable[[bytes], bool], timeout: float) -> bytes:
    """The first message on ``topic`` (retained ones included) that ``ok`` accepts."""

    async def watch() -> bytes:
        async with aiomqtt.Client(**BrokerConfig.from_url(url).client_kwargs()) as c:
            await c.subscribe(topic, qos=1)
            async for message in c.messages:
                payload = bytes(message.payload)
                if payload and ok(payload):
                    return payload
        raise AssertionError("the connection closed")

    return await asyncio.wait_for(watch(), timeout)


@pytest.mark.broker
async def test_three_agents_spend_epsilon_past_the_defences_and_the_aggregator_reports_it(
    mosquitto, fleet, daemons, digits_files, tmp_path
):
    shards, _ = digits_files(3)
    common = ["--broker", mosquitto.url, "--fleet", fleet]
    daemons.start(
        "agg", "aggregator", *common, "--model", "mlp:64,16,10",
        "--out-dir", str(tmp_path / "agg"), "--status-interval", "0.3",
        "--dp-clip", "1", "--dp-noise", "1", "--no-export-onnx",
    )  # fmt: skip
    for i in range(3):
        daemons.start(
            f"dev{i}", "agent", *common, "--device", f"dev{i}", "--data", str(shards[i]),
            "--state-dir", str(tmp_path / f"state{i}"), "--seed", "1",
        )  # fmt: skip
    t = Topics(fleet)

    def status(ok: Callable[[AggregatorStatus], bool]) -> Callable[[bytes], bool]:
        return lambda payload: ok(AggregatorStatus.decode(payload))

    try:
        early = AggregatorStatus.decode(
            await first(mosquitto.url, t.aggregator_status, status(lambda s: s.accepted >= 1), 90)
        )
        assert early.epsilon is not None and early.epsilon > 0
        later = AggregatorStatus.decode(
            await first(
                mosquitto.url,
                t.aggregator_status,
                status(lambda s: s.accepted >= early.accepted + 6),
                90,
            )
        )
        assert later.epsilon is not None and later.epsilon > early.epsilon
        # Defences on, and none of the honest noised updates refused by the norm bound
        # (their norm is about C·sqrt(1 + z²d) = 35 for d = 1210, far above any median).
        assert later.params["defence"] is True and later.params["norm_mode"] == "reject"
        assert later.rejected.get("norm_bound", 0) == 0, later.rejected
        assert later.version >= 2
        ledger = DeviceLedger.decode(
            await first(
                mosquitto.url,
                t.aggregator_device("dev0"),
                lambda p: DeviceLedger.decode(p).accepted >= 1,
                60,
            )
        )
        assert ledger.epsilon is not None and 0 < ledger.epsilon <= later.epsilon
    except BaseException:
        print(daemons.logs())
        raise
