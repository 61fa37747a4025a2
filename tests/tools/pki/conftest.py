"""The production broker fixture: Mosquitto on production.conf with a generated fleet ACL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from provisioned import OTHER_USERS, USERS, Secure, add_device, make_certs, production_conf

from tools.broker import LocalBroker


@pytest.fixture
def secure(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    new_broker: Callable[..., LocalBroker],
    fleet: str,
) -> Secure:
    """Mosquitto on production.conf, with a fresh CA and server cert, USERS in ``fleet``
    and OTHER_USERS in a second fleet (``secure.other``), all written by add-device."""
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    conf = tmp_path / "production.conf"
    conf.write_text(production_conf(tmp_path, passwd, acl))
    # Made first: a missing Mosquitto skips (or, under CI, fails) before provisioning.
    broker = new_broker("mosquitto", config=conf, workdir=tmp_path)
    make_certs(capsys, tmp_path / "certs")
    out = Secure(broker, tmp_path / "certs", fleet, f"other-{uuid.uuid4().hex[:8]}")
    for users, in_fleet in ((USERS, out.fleet), (OTHER_USERS, out.other)):
        for user, role in users.items():
            out.passwords[user] = add_device(capsys, passwd, user, role, in_fleet)
    broker.start()
    return out
