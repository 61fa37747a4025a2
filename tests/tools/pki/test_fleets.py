"""Fleet isolation on the wire: a user of fleet X can neither write to nor read fleet Y.

``secure.fleet`` (X) has dev-a, dev-b, aggregator and observer; ``secure.other`` (Y) has
dev-y, agg-y and obs-y, all provisioned by ``fedmq broker add-device --fleet``.
"""

from __future__ import annotations

import pytest
from provisioned import MARKER, Secure, bounded, seen, until_marker

pytestmark = pytest.mark.broker


def forged_into(fleet: str, device: str) -> list[tuple[str, bool]]:
    """Every topic of ``fleet``, written as ``device`` would in its own: (topic, retain)."""
    y = f"fl/{fleet}"
    return [
        (f"{y}/updates/{device}", False),
        (f"{y}/devices/{device}/status", True),
        (f"{y}/stats/{device}", False),
        (f"{y}/model/global", True),
        (f"{y}/model/onnx", True),
        (f"{y}/aggregator/status", True),
        (f"{y}/aggregator/devices/dev-y", True),
    ]


async def test_no_one_in_x_can_publish_into_y(secure: Secure) -> None:
    y = f"fl/{secure.other}"
    model, marker = f"{y}/model/global", f"{y}/updates/dev-y"

    async def scenario() -> None:
        async with (
            secure.client("agg-y") as agg_y,
            secure.client("obs-y") as obs_y,
            secure.client("dev-y") as dev_y,
            secure.client("dev-a") as dev_x,
            secure.client("aggregator") as agg_x,
        ):
            await agg_y.publish(model, b"y-model", qos=1, retain=True)
            for topic in ("updates/+", "devices/+/status", "stats/+"):
                await agg_y.subscribe(f"{y}/{topic}", qos=1)
            await obs_y.subscribe(f"{y}/#", qos=1)
            # A device of X as itself and as dev-y; X's aggregator as Y's aggregator.
            for thief, device in ((dev_x, "dev-a"), (dev_x, "dev-y"), (agg_x, "dev-y")):
                for topic, retain in forged_into(secure.other, device):
                    await thief.publish(topic, b"forged", qos=1, retain=retain)
            await dev_y.publish(marker, MARKER, qos=1)
            assert seen(await until_marker(agg_y, marker)) == [(marker, MARKER)]
            assert seen(await until_marker(obs_y, marker)) == [
                (model, b"y-model"),
                (marker, MARKER),
            ]
        # Y's retained model is still Y's aggregator's.
        async with secure.client("dev-y") as late:
            await late.subscribe(model, qos=1)
            message = await anext(late.messages)
            assert (message.payload, message.retain) == (b"y-model", True)

    await bounded(scenario())


async def test_no_one_in_x_can_read_y(secure: Secure) -> None:
    x, y = f"fl/{secure.fleet}", f"fl/{secure.other}"
    x_model = f"{x}/model/global"
    filters = ["fl/#", "fl/+/model/global", f"{y}/#", f"{y}/model/global"]
    filters += [f"{y}/updates/+", f"{y}/devices/+/status", f"{y}/stats/+"]
    filters += [f"{y}/aggregator/devices/dev-a", f"$share/g/{y}/updates/+"]

    async def scenario() -> None:
        async with (
            secure.client("agg-y") as agg_y,
            secure.client("dev-y") as dev_y,
            secure.client("aggregator") as agg_x,
            secure.client("dev-a") as dev_x,
            secure.client("observer") as obs_x,
        ):
            # Retained in Y first, including a ledger entry under an X device's name.
            await agg_y.publish(f"{y}/model/global", b"y-model", qos=1, retain=True)
            await agg_y.publish(f"{y}/aggregator/devices/dev-a", b"y-ledger", qos=1, retain=True)
            await dev_y.publish(f"{y}/devices/dev-y/status", b"y-online", qos=1, retain=True)
            for reader in (agg_x, dev_x, obs_x):
                for topic in filters:
                    await reader.subscribe(topic, qos=1)
            # Then live traffic in Y, then the marker in X.
            await dev_y.publish(f"{y}/updates/dev-y", b"y-update", qos=1)
            await dev_y.publish(f"{y}/stats/dev-y", b"y-stats", qos=1)
            await agg_y.publish(f"{y}/model/global", b"y-model-2", qos=1, retain=True)
            await agg_x.publish(x_model, MARKER, qos=1, retain=True)
            for reader in (agg_x, dev_x, obs_x):
                got = seen(await until_marker(reader, x_model))
                assert got == [(x_model, MARKER)]

    await bounded(scenario())


async def test_each_fleet_works_on_its_own(secure: Secure) -> None:
    # The same broker still carries both fleets: isolation, not a broken ACL.
    async def scenario() -> None:
        for agg_user, dev_user, fleet in (
            ("aggregator", "dev-a", secure.fleet),
            ("agg-y", "dev-y", secure.other),
        ):
            update = f"fl/{fleet}/updates/{dev_user}"
            async with secure.client(agg_user) as agg, secure.client(dev_user) as dev:
                await agg.subscribe(f"$share/fedmq/fl/{fleet}/updates/+", qos=1)
                await dev.subscribe(f"fl/{fleet}/model/global", qos=1)
                await dev.publish(update, MARKER, qos=1)
                assert seen(await until_marker(agg, update)) == [(update, MARKER)]
                await agg.publish(f"fl/{fleet}/model/global", MARKER, qos=1)
                assert seen(await until_marker(dev, f"fl/{fleet}/model/global")) == [
                    (f"fl/{fleet}/model/global", MARKER)
                ]

    await bounded(scenario())
