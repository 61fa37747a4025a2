"""The fleet ACL file: one block per user, replaced in place of nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedmq.errors import ConfigError, TopicError
from tools.pki import acl
from tools.pki.provision import ACL_FILE

NAMES = st.sampled_from(["pi-1", "pi-2", "agg", "ops", "x.y_z"])
GRANT = st.tuples(NAMES, st.sampled_from(acl.ROLES), st.sampled_from(["farm", "lab", "f-2"]))


@given(st.lists(GRANT, max_size=12))
def test_the_last_grant_of_each_user_is_the_one_in_the_file(grants: list) -> None:
    text = ACL_FILE.read_text()
    expected = {}
    for user, role, fleet in grants:
        text = acl.with_user(text, user, role, fleet)
        expected[user] = (role, fleet)
    assert text.startswith(ACL_FILE.read_text().rstrip("\n"))
    assert acl.grants(text) == expected
    users = [line.split()[1] for line in text.splitlines() if line.startswith("user ")]
    assert sorted(users) == sorted(expected)  # one block each
    for user, (role, fleet) in expected.items():
        own = text.split(f"\nuser {user}\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert own == acl.block(user, role, fleet)[2:]
        assert all(f" fl/{fleet}/" in line for line in own)  # nothing outside its fleet


def test_a_device_writes_only_its_own_topics() -> None:
    writes = [line for line in acl.block("pi-1", "device", "farm") if "write" in line]
    assert writes == [
        "topic write fl/farm/updates/pi-1",
        "topic write fl/farm/devices/pi-1/status",
        "topic write fl/farm/stats/pi-1",
    ]
    assert not any("write" in line for line in acl.block("ops", "observer", "farm"))


@pytest.mark.parametrize(
    ("user", "role", "fleet", "error"),
    [
        ("pi 1", "device", "farm", TopicError),  # a space would end the `user` line
        ("pi-1", "device", "fa\nrm", TopicError),  # a newline would start a directive
        ("pi-1", "device", "+", TopicError),
        ("pi-1", "admin", "farm", ConfigError),
    ],
)
def test_bad_names_never_reach_the_file(user: str, role: str, fleet: str, error: type) -> None:
    with pytest.raises(error):
        acl.with_user("", user, role, fleet)


@pytest.mark.parametrize(
    "text", ["pattern read fl/+/model/global\n", "user\ntopic read fl/#\n", "user a b\n"]
)
def test_files_fedmq_cannot_keep_fleets_apart_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        acl.with_user(text, "pi-1", "device", "farm")
